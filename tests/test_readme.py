"""The README's figures are the records': every generated block equals what
`collect --readme` makes from results/reference now, and every command in its opening is real."""
import re
from pathlib import Path

from benchmark.results.readme import blocks

ROOT = Path(__file__).resolve().parent.parent


def test_readme_results_blocks_match_the_reference_records():
    text = (ROOT / "README.md").read_text()
    generated = blocks(ROOT / "results" / "reference")
    found = re.findall(r"<!-- generated:(\w+) -->\n(.*?)<!-- /generated:\1 -->", text, re.S)
    assert {name for name, _ in found} >= {"provenance", "headline", "tokenizers", "validation"}
    for name, body in found:
        assert name in generated, f"README block {name!r} has no source in results/reference"
        assert body.strip() == generated[name].strip(), (
            f"README block {name!r} differs from results/reference: run "
            "`python -m benchmark collect --results results/reference --readme README.md`")


def test_reference_records_name_a_clean_commit():
    text = blocks(ROOT / "results" / "reference")["provenance"]
    assert "commit" in text and "(dirty)" not in text
