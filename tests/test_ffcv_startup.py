"""ffcv imported without its per-process numba compilations, and still decoding as ffcv does."""
import json

from conftest import run_script


def test_importing_the_loader_compiles_no_typed_dict_and_caches_the_quasi_random_order():
    """ffcv's import built a numba typed Dict (3 s of compiling numba's dict machinery in every process) and
    compiled QUASI_RANDOM's order generator afresh in each (1.5 s)."""
    code = ("import json, numba.typed; from numba.typed import typeddict; import pipeline.data; "
            "from ffcv.fields import rgb_image; from ffcv.traversal_order import quasi_random; "
            "print(json.dumps({'modes': rgb_image.IMAGE_MODES, 'plain': type(rgb_image.IMAGE_MODES) is dict, "
            "'restored': numba.typed.Dict is typeddict.Dict, 'compiled': len(typeddict._make_dict.signatures), "
            "'cache': type(quasi_random.generate_order_inner._cache).__name__}))")
    done = run_script(["-c", code], timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[-1]) == {"modes": {"jpg": 0, "raw": 1}, "plain": True,
                                                        "restored": True, "compiled": 0, "cache": "FunctionCache"}
