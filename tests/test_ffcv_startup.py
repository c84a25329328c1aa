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


def test_the_os_cache_reader_loads_from_numbas_disk_cache_and_reads_every_field(tiny_betons):
    """OSCacheManager compiled its reader for every loader (2 s for a process's first, 0.25 s for each after).
    The reader now comes from numba's disk cache; each loader still gets a dispatcher of its own, and it returns
    each stored field's bytes as they are in the file."""
    beton = tiny_betons / "train.beton"
    code = ("import json, pipeline.data; from ffcv.memory_managers.os_cache import OSCacheManager; "
            "from ffcv.reader import Reader; "
            f"manager = OSCacheManager(Reader({str(beton)!r})); read, other = manager.compile_reader(), "
            "manager.compile_reader(); manager.context.__enter__(); state = manager.context.state; "
            f"data = open({str(beton)!r}, 'rb').read(); "
            "print(json.dumps({'cache': type(read._cache).__name__, 'own': read is not other, "
            "'fields': len(manager.ptrs), 'same': sum(bytes(read(address, state)) == data[address:address + size] "
            "for address, size in zip(manager.ptrs, manager.sizes))}))")
    done = run_script(["-c", code], timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.splitlines()[-1])
    assert found["fields"] >= 120 and found == {"cache": "FunctionCache", "own": True, "fields": found["fields"],
                                                "same": found["fields"]}
