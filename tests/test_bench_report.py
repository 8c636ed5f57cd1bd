"""bench/report.py: a section starts a missing page with its title and follows an existing one after one blank line."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from report import append_section  # noqa: E402


def test_sections_start_a_page_and_follow_each_other(tmp_path):
    page = tmp_path / "PAGE.md"
    append_section(page, "# Title\n", "## one\n\ntext\n")
    append_section(page, "# ignored: the page exists\n", "## two\n")
    assert page.read_text() == "# Title\n\n## one\n\ntext\n\n## two\n"
