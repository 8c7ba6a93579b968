from __future__ import annotations

from pathlib import Path

from loopline.reference import BEGIN, END, config_reference

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_config_reference_is_current() -> None:
    text = README.read_text()
    assert BEGIN in text and END in text, "README.md lost its config-reference markers"
    block = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert block == config_reference(), "run `.venv/bin/python -m loopline.reference` to refresh README.md"


def test_every_field_is_described() -> None:
    for line in config_reference().splitlines()[2:]:
        assert not line.rstrip().endswith("|  |"), f"field without a description: {line}"
