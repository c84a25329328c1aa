"""pipeline/gc_freeze.py: an entry point's imports run without collections and end frozen; later objects are
collected as before, and a library import leaves the importer's collector as it was."""
import gc
import runpy

from conftest import REPO
from pipeline.gc_freeze import imports_frozen


class Cycle:
    def __init__(self):
        self.me = self


def a_new_cycle_is_collected() -> bool:
    gc.collect()
    Cycle()
    return gc.collect() > 0


def test_imports_run_without_collections_and_their_objects_end_frozen():
    with imports_frozen():
        assert not gc.isenabled()
        imported = Cycle()
    assert gc.isenabled()
    assert all(tracked is not imported for tracked in gc.get_objects())  # in no generation a collection scans
    assert a_new_cycle_is_collected()  # what is made later is collected as before


def test_a_library_import_leaves_the_collector_as_it_was():
    with imports_frozen(as_a_script=False):
        assert gc.isenabled()
        made = Cycle()
    # Not the freeze count before and after: frozen objects that die in between (another test's) lower it.
    assert any(tracked is made for tracked in gc.get_objects())  # still in a generation a collection scans
    gc.disable()
    try:
        with imports_frozen():
            pass
        assert not gc.isenabled()  # a caller that had it off keeps it off
    finally:
        gc.enable()


def test_train_py_freezes_its_imports():
    alive = Cycle()  # something for a freeze to move
    runpy.run_path(str(REPO / "pipeline" / "train.py"), run_name="imported")
    assert gc.isenabled() and all(tracked is not alive for tracked in gc.get_objects())  # frozen
