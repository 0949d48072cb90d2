import pytest

from editscope.registry import Registry, RegistryError


def test_lookup_and_did_you_mean():
    reg: Registry[int] = Registry("editor")
    reg.add("memit", 1)
    reg.add("rome", 2)
    assert reg.get("memit") == 1
    assert reg.names() == ["memit", "rome"]
    with pytest.raises(RegistryError, match=r"unknown editor 'memt' \(did you mean 'memit'\?\)"):
        reg.get("memt")


def test_invalid_and_duplicate_names():
    reg: Registry[object] = Registry("editor")
    with pytest.raises(RegistryError, match="invalid editor name"):
        reg.add("Bad Name", object())
    reg.add("ft", 1)
    with pytest.raises(RegistryError, match="already registered"):
        reg.add("ft", 2)


def test_decorator_registers_beside_implementation():
    reg: Registry[type] = Registry("instrument")

    @reg.register("weights")
    class Weights:
        pass

    assert reg.get("weights") is Weights
    assert "weights" in reg
