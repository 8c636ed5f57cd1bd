"""bench/vae_step_profile.py: profiler events grouped by kind, per step, and its section of the images page
written beside the other sections."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import vae_step_profile as P  # noqa: E402


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("aten::mm", "matmul"),
        ("aten::addmm", "matmul"),
        ("aten::normal_", "random"),
        ("aten::tanh_backward", "activations"),
        ("_SigmoidTanhBackward", "activations"),
        ("aten::log_sigmoid_forward", "activations"),
        ("aten::_fused_adam_", "optimiser"),
        ("Optimizer.step#Adam.step", "optimiser"),
        ("aten::copy_", "casts"),
        ("aten::eq", "checks"),
        ("aten::all", "checks"),
        ("enumerate(DataLoader)#_SingleProcessDataLoaderIter.__next__", "data"),
        ("aten::index", "data"),
        ("aten::mul", "other"),
        ("aten::mm_backward_of_something", "other"),  # whole names only
        ("aten::index_select", "other"),
    ],
)
def test_each_operation_has_its_kind(name, kind):
    assert P.kind_of(name) == kind


def test_a_profile_becomes_milliseconds_per_step_by_kind():
    profile = {"steps": 4, "wall_ms": 40.0, "ops_ms": {"aten::mm": 8.0, "aten::addmm": 4.0, "aten::mul": 2.0}}
    row = P.per_step(profile)
    assert row["wall"] == 10.0 and row["matmul"] == 3.0 and row["other"] == 0.5 and row["random"] == 0.0


def test_the_table_gives_each_prior_its_excess_over_the_gaussian_prior_of_the_same_precision():
    row = dict.fromkeys(["wall", *P.KINDS, "other"], 1.0)
    cells = {
        ("gaussian", "32-true"): {**row, "wall": 7.0},
        ("snis", "32-true"): {**row, "wall": 9.5},
        ("gaussian", "bf16-mixed"): {**row, "wall": 6.0},
        ("snis", "bf16-mixed"): {**row, "wall": 6.5},
    }
    lines = P.table(cells)
    assert lines[2].startswith("| gaussian | 32-true | 7.00 | - |")
    assert lines[3].startswith("| snis | 32-true | 9.50 | +2.50 |")
    assert lines[5].startswith("| snis | bf16-mixed | 6.50 | +0.50 |")


def test_its_section_replaces_only_itself(tmp_path):
    page = tmp_path / "BENCHMARKS_IMAGES.md"
    page.write_text("# Image benchmarks\n\n## Training speed\n\nkept\n")
    P.update_section(page, [P.HEADING, "", "first"], P.HEADING)
    P.update_section(page, [P.HEADING, "", "second"], P.HEADING)
    text = page.read_text()
    assert "kept" in text and "second" in text and "first" not in text and text.count(P.HEADING) == 1


def test_a_replaced_section_keeps_the_blank_line_before_the_next_heading(tmp_path):
    import images_vs_tf

    page = tmp_path / "BENCHMARKS_IMAGES.md"
    page.write_text(f"# Image benchmarks\n\n{images_vs_tf.HEADING}\n\nold\n\n{P.HEADING}\n\nprofile\n")
    images_vs_tf.update_section(page, [images_vs_tf.HEADING, "", "| a |", "", "Measured today."])
    images_vs_tf.update_section(page, [images_vs_tf.HEADING, "", "| b |", "", "Measured again."])
    text = page.read_text()
    assert f"Measured again.\n\n{P.HEADING}\n\nprofile\n" in text and "old" not in text and "| a |" not in text


def test_the_step_and_memory_tables_keep_the_other_scripts_sections(tmp_path):
    import images_vs_tf
    import vae_compile
    import vae_steps

    page = tmp_path / "BENCHMARKS_IMAGES.md"
    page.write_text("# old tables\n\n## Training step\n\nold\n")
    images_vs_tf.update_section(page, [images_vs_tf.HEADING, "", "versus TF"])
    P.update_section(page, [P.HEADING, "", "profile"], P.HEADING)
    vae_compile.update_section(page, [vae_compile.HEADING, "", "compiled"], vae_compile.HEADING)
    vae_steps.write_page(page, "# new tables\n\n## Training step\n\nnew\n")
    text = page.read_text()
    assert text.startswith("# new tables") and "old" not in text
    assert "versus TF" in text and "profile" in text and "compiled" in text
    assert text.index(images_vs_tf.HEADING) < text.index(P.HEADING) < text.index(vae_compile.HEADING)


@pytest.mark.parametrize("arguments", [["--steps", "0"], ["--warmup", "-1"]])
def test_impossible_step_counts_are_refused_before_any_run(arguments, capsys):
    with pytest.raises(SystemExit):
        P.main(arguments)
    assert "--steps must be >= 1 and --warmup >= 0" in capsys.readouterr().err


def test_the_compile_table_says_never_where_compiling_saves_nothing():
    import vae_compile

    cell = {"eager_ms": 10.0, "compiled_ms": 8.0, "ratio": 1.25, "compile_s": 20.0, "break_even": 10_000.0}
    assert vae_compile.row("snis", "32-true", cell) == "| snis | 32-true | 10.00 | 8.00 | 1.25 | 20.0 | 10,000 |"
    never = vae_compile.row("snis", "32-true", {**cell, "break_even": float("inf")})
    assert never.endswith("| never |")


@pytest.mark.parametrize("arguments", [["--steps", "0"], ["--rounds", "0"]])
def test_the_compile_benchmark_refuses_impossible_counts(arguments, capsys):
    import vae_compile

    with pytest.raises(SystemExit):
        vae_compile.main(arguments)
    assert "--steps and --rounds must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("arguments", [["--rows", "0"], ["--cols", "0"], ["--repeats", "0"], ["--rounds", "0"]])
def test_the_random_draw_benchmark_refuses_impossible_counts(arguments, capsys):
    import compiled_random

    with pytest.raises(SystemExit):
        compiled_random.main(arguments)
    assert "--rows, --cols, --repeats and --rounds must be >= 1" in capsys.readouterr().err


@pytest.mark.slow
def test_the_random_draw_benchmark_times_both_generators(capsys):
    import compiled_random

    compiled_random.main(["--rows", "4", "--cols", "3", "--repeats", "2", "--rounds", "1"])
    out = capsys.readouterr().out
    assert "4 x 3 standard normals" in out and "inductor's generator:" in out and "torch's generator:" in out
