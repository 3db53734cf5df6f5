import pytest

from strkit.registry import Registry, RegistryError


def make_registry() -> Registry:
    reg: Registry = Registry("widget")

    @reg.register("box")
    class Box:
        def __init__(self, size: int, colour: str = "red", *, scale: float = 1.0) -> None:
            self.size, self.colour, self.scale = size, colour, scale

    @reg.register("free")
    def free(**kwargs):
        return kwargs

    return reg


def test_build_passes_config_and_extra_kwargs():
    reg = make_registry()
    box = reg.build({"name": "box", "colour": "blue"}, size=3)
    assert (box.size, box.colour, box.scale) == (3, "blue", 1.0)
    assert reg.build("free", a=1) == {"a": 1}
    assert reg.names() == ["box", "free"]
    assert "box" in reg and "nope" not in reg


def test_unknown_name_lists_known_names_and_suggests():
    reg = make_registry()
    with pytest.raises(RegistryError, match=r"unknown widget 'bx'.*box, free.*Did you mean 'box'"):
        reg.get("bx")


def test_unknown_key_is_named_with_its_config_path():
    reg = make_registry()
    with pytest.raises(RegistryError, match=r"model.widget \(widget 'box'\): unknown key 'colur'.*'colour'"):
        reg.build({"name": "box", "colur": "blue"}, where="model.widget", size=1)


def test_missing_name_and_clash_with_pipeline_kwargs():
    reg = make_registry()
    with pytest.raises(RegistryError, match="missing 'name'"):
        reg.build({"size": 1})
    with pytest.raises(RegistryError, match="set by the pipeline"):
        reg.build({"name": "box", "size": 2}, size=1)


def test_double_registration_is_refused():
    reg = make_registry()
    with pytest.raises(RegistryError, match="registered twice"):
        reg.register("box")(object)


def test_loader_runs_lazily_once():
    calls = []
    reg: Registry = Registry("thing", loader=lambda: calls.append(1) or reg.register("a")(dict))
    assert calls == []
    assert reg.names() == ["a"]
    reg.get("a")
    assert calls == [1]
