"""Progress of a long loop: tqdm's bar on a terminal, a plain line a minute where the output is a file or a pipe.

A bar redraws itself with carriage returns, which a file keeps: under SLURM (slurm-%j.out), nohup or a redirect,
an epoch's redraws piled up on one line of up to megabytes, and train.py's epoch line landed at its end, so that
`grep 'val top-1'` printed the whole pile and `tail -f` showed a line that never ended."""
import sys

from tqdm import tqdm

PLAIN_LINE_SECONDS = 60  # where no terminal shows a bar: one line a minute says the loop runs and how far it got
PLAIN_FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit} ({percentage:.0f}%), {elapsed} in, ≈ {remaining} to go{postfix}"
PLAIN_FORMAT_OPEN_ENDED = "{desc}: {n_fmt} {unit}, {elapsed} in{postfix}"  # a loop of unknown length


def is_terminal(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class Progress(tqdm):
    """tqdm (same arguments) that draws its bar only on a terminal. Elsewhere it writes a plain line at most every
    PLAIN_LINE_SECONDS, the first one that far in (a loop shorter than that writes nothing), and nothing at its
    end: the loop's own summary follows."""

    def __init__(self, *args, file=None, **kwargs):
        file = sys.stderr if file is None else file
        self.plain = not is_terminal(file)
        if self.plain:
            total = kwargs.get("total")
            if total is None and args and hasattr(args[0], "__len__"):  # as tqdm takes it
                total = len(args[0])
            kwargs.update(mininterval=PLAIN_LINE_SECONDS, delay=PLAIN_LINE_SECONDS, leave=False,
                          bar_format=PLAIN_FORMAT if total else PLAIN_FORMAT_OPEN_ENDED)
        super().__init__(*args, file=file, **kwargs)

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
        # on a terminal the bar shows it at once; in a file it waits for the next line
        super().set_postfix(ordered_dict, refresh=refresh and not self.plain, **kwargs)

    def display(self, msg=None, pos=None):
        if not self.plain:
            return super().display(msg, pos)
        if msg == "":  # a bar clearing its line: a file has none to clear
            return False
        self.fp.write(f"{self if msg is None else msg}\n")
        self.fp.flush()
        return True
