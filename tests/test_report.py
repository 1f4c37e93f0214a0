"""Table 3 from fixture results JSONs: layout, averages, marks, the three formats, plots, CLI."""

from __future__ import annotations

import csv
import glob
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from iab_jax import report
from iab_jax.data import degradations

CLASSES = ["real", "gen_a", "gen_b"]

# Accuracy (fraction) per level 0..6 of each fixture run; None leaves the level out.
STANDARD = {
    "resnet50": [0.90, 0.80, 0.70, 0.60, 0.50, 0.40, 0.30],
    "dct_cnn": [0.75, 0.66, 0.45, 0.277, 0.201, 0.06, None],
    "hifi_net": [0.968, 0.889, 0.601, 0.16, 0.135, 0.367, 0.102],
}
SEMANTIC = {
    ("resnet50", "cat"): [0.5] + [0.2] * 6,
    ("resnet50", "FFHQ"): [0.6] + [0.3] * 6,
    ("dct_cnn", "cat"): [0.5, 0.1, 0.1, None, 0.1, 0.1, 0.1],
    ("hifi_net", "cat"): [0.4, 0.2, 0.3, 0.2, 0.3, 0.2, 0.3],
    ("hifi_net", "bedroom"): [0.7] + [0.35] * 6,
    ("hifi_net", "dog"): [0.8] + [0.4] * 6,
}
DISPLAY = {"resnet50": "ResNet-50", "dct_cnn": "DCT-CNN", "hifi_net": "HiFi-Net"}


def level_entry(level: int, acc: float) -> dict:
  # A confusion matrix with about `acc` on the diagonal; only the plots read it.
  hits = round(100 * acc)
  confusion = [[hits if i == j else (100 - hits) // 2 for j in range(3)] for i in range(3)]
  return {"level": level, "level_name": degradations.LEVEL_NAMES[level],
          "num_examples": 300, "accuracy": acc, "auc_macro": None, "ap_macro": None,
          "confusion": confusion, "per_class_accuracy": {c: acc for c in CLASSES},
          "per_semantic_accuracy": {}, "per_semantic_count": {}}


def make_run(method: str, task: str, accs, *, created="2026-11-23T10:00:00+00:00",
             extra_evals=()) -> dict:
  levels = {str(k): level_entry(k, a) for k, a in enumerate(accs) if a is not None}
  evals = {"test": {"split": "test", "levels": levels, "mean_degraded_accuracy": None}}
  for name in extra_evals:
    evals[name] = {"split": name, "levels": {"0": level_entry(0, accs[0])}}
  semantic = task.split(":", 1)[1] if task.startswith("semantic:") else None
  return {
      "format": "iab_jax.results", "version": 1, "method": method,
      "method_display": DISPLAY.get(method, method), "task": task,
      "protocol": "semantic" if semantic else task, "train_semantic": semantic,
      "created": created, "workdir": "/nowhere", "config": {}, "classes": CLASSES,
      "dataset": {"root": "/nowhere", "fingerprint": "f", "num_records": 900},
      "manifest": {"name": task, "path": "/nowhere", "digest": "d"},
      "checkpoint": {"step": 1, "epoch": 1, "val_accuracy": 0.5},
      "evals": evals,
  }


def write_run(root, name: str, run: dict) -> str:
  path = os.path.join(root, name)
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "results.json"), "w") as f:
    json.dump(run, f)
  return path


@pytest.fixture
def runs_dir(tmp_path):
  root = tmp_path / "runs"
  # Written out of row order: rows follow sorted paths, which the a_/b_/c_ prefixes fix.
  prefix = {"resnet50": "a", "dct_cnn": "b", "hifi_net": "c"}
  for method, accs in STANDARD.items():
    extra = ("val",) if method == "resnet50" else ()
    write_run(root, f"{prefix[method]}_{method}/standard", make_run(method, "standard", accs,
                                                                  extra_evals=extra))
  for (method, cls), accs in SEMANTIC.items():
    write_run(root, f"{prefix[method]}_{method}/semantic_{cls}",
              make_run(method, f"semantic:{cls}", accs))
  # Not a Table 3 task: loaded (and plotted) but not in the table.
  write_run(root, "d_other/openset", make_run("resnet50", "openset", [0.5] * 7))
  return str(root)


def pct(x):
  return 100.0 * x


def value(table, method, key):
  row = table.rows.index(method) if method == "Avg" else table.methods.index(method)
  return table.values[row, table.keys.index(key)]


def mark(table, method, key):
  return int(table.marks[table.methods.index(method), table.keys.index(key)])


def test_layout(runs_dir):
  table = report.table3(report.load_runs([runs_dir]))
  assert table.rows == ("ResNet-50", "DCT-CNN", "HiFi-Net", "Avg")
  assert table.methods == ("resnet50", "dct_cnn", "hifi_net")
  assert [c.title for c in table.header] == [
      "Clean Acc. (%)", "DS (0.5x)", "DS (0.25x)", "JPEG (q=65)", "JPEG (q=30)", "Blur (σ=3)",
      "Blur (σ=5)", "Avg Acc.", "Train on Cat", "Train on Human Face", "Train on Bedroom",
      "Train on Dog", "Semantic Avg"]
  assert [c.section for c in table.header] == ["Standard Task"] * 8 + ["Semantic Task"] * 5
  assert table.keys[:8] == ("standard/clean", "standard/ds_0.5", "standard/ds_0.25",
                            "standard/jpeg_65", "standard/jpeg_30", "standard/blur_3",
                            "standard/blur_5", "standard/avg")
  assert table.keys[8:] == tuple(f"semantic/{c}/{h}" for c in ("cat", "FFHQ", "bedroom", "dog",
                                                                "avg")
                                 for h in ("clean", "degraded"))
  assert table.values.shape == table.marks.shape == (4, len(table.keys))


def test_paper_columns_present_without_runs(tmp_path):
  write_run(tmp_path, "r", make_run("resnet50", "standard", STANDARD["resnet50"]))
  write_run(tmp_path, "s", make_run("resnet50", "semantic:Scene/church", [0.5] * 7))
  table = report.table3(report.load_runs([tmp_path]))
  sem = [c.title for c in table.header if c.section == "Semantic Task"]
  # The official folder name is mapped to the registry's class and sorted after the paper's three.
  assert sem == ["Train on Cat", "Train on Human Face", "Train on Bedroom", "Train on Church",
                 "Semantic Avg"]
  assert np.isnan(value(table, "resnet50", "semantic/cat/clean"))
  assert value(table, "resnet50", "semantic/church/clean") == pytest.approx(50.0)


def test_values_and_averages(runs_dir):
  table = report.table3(report.load_runs([runs_dir]))
  for method, accs in STANDARD.items():
    for level, (key, _) in enumerate(report.STANDARD_LEVEL_COLUMNS):
      got = value(table, method, f"standard/{key}")
      if accs[level] is None:
        assert np.isnan(got)
      else:
        assert got == pytest.approx(pct(accs[level]))
  assert value(table, "resnet50", "standard/avg") == pytest.approx(55.0)
  assert value(table, "hifi_net", "standard/avg") == pytest.approx(
      pct(np.mean(STANDARD["hifi_net"][1:])))
  assert np.isnan(value(table, "dct_cnn", "standard/avg"))  # level 6 missing

  assert value(table, "resnet50", "semantic/cat/clean") == pytest.approx(50.0)
  assert value(table, "resnet50", "semantic/cat/degraded") == pytest.approx(20.0)
  assert value(table, "hifi_net", "semantic/cat/degraded") == pytest.approx(25.0)
  assert np.isnan(value(table, "dct_cnn", "semantic/cat/degraded"))  # level 3 missing
  assert np.isnan(value(table, "resnet50", "semantic/bedroom/clean"))
  # Semantic Avg: over the classes the method has, clean and degraded separately.
  assert value(table, "resnet50", "semantic/avg/clean") == pytest.approx(55.0)
  assert value(table, "resnet50", "semantic/avg/degraded") == pytest.approx(25.0)
  assert value(table, "hifi_net", "semantic/avg/clean") == pytest.approx((40 + 70 + 80) / 3)
  assert value(table, "hifi_net", "semantic/avg/degraded") == pytest.approx((25 + 35 + 40) / 3)
  assert value(table, "dct_cnn", "semantic/avg/clean") == pytest.approx(50.0)
  assert np.isnan(value(table, "dct_cnn", "semantic/avg/degraded"))

  # Avg row: mean over the methods that have the cell.
  assert value(table, "Avg", "standard/clean") == pytest.approx((90 + 75 + 96.8) / 3)
  assert value(table, "Avg", "standard/blur_5") == pytest.approx((30 + 10.2) / 2)
  assert value(table, "Avg", "standard/avg") == pytest.approx(
      (55.0 + pct(np.mean(STANDARD["hifi_net"][1:]))) / 2)
  assert value(table, "Avg", "semantic/cat/clean") == pytest.approx((50 + 50 + 40) / 3)
  assert value(table, "Avg", "semantic/dog/degraded") == pytest.approx(40.0)
  assert value(table, "Avg", "semantic/FFHQ/clean") == pytest.approx(60.0)


def test_marks(runs_dir):
  table = report.table3(report.load_runs([runs_dir]))
  assert mark(table, "hifi_net", "standard/clean") == report.BEST
  assert mark(table, "resnet50", "standard/clean") == report.SECOND
  assert mark(table, "dct_cnn", "standard/clean") == 0
  assert mark(table, "resnet50", "standard/blur_5") == report.BEST
  assert mark(table, "hifi_net", "standard/blur_5") == report.SECOND
  assert mark(table, "dct_cnn", "standard/blur_5") == 0  # missing cells are never marked
  # A tie for best marks both; the next value down is second.
  assert mark(table, "resnet50", "semantic/cat/clean") == report.BEST
  assert mark(table, "dct_cnn", "semantic/cat/clean") == report.BEST
  assert mark(table, "hifi_net", "semantic/cat/clean") == report.SECOND
  # The two halves of a semantic cell are ranked separately.
  assert mark(table, "hifi_net", "semantic/cat/degraded") == report.BEST
  assert mark(table, "resnet50", "semantic/cat/degraded") == report.SECOND
  assert not table.marks[-1].any()  # the Avg row is not a method


def test_marks_compare_displayed_values(tmp_path):
  # 89.74 and 89.66 both show as 89.7: a reader sees a tie, so both are best.
  for name, clean in (("a", 0.8974), ("b", 0.8966), ("c", 0.85)):
    write_run(tmp_path, name, make_run(name, "standard", [clean] + [0.5] * 6))
  table = report.table3(report.load_runs([tmp_path]))
  assert [mark(table, m, "standard/clean") for m in "abc"] == [report.BEST, report.BEST,
                                                               report.SECOND]
  # Equal everywhere else: all best, nobody second.
  assert [mark(table, m, "standard/ds_0.5") for m in "abc"] == [report.BEST] * 3


def test_markdown(runs_dir):
  md = report.to_markdown(report.table3(report.load_runs([runs_dir])))
  lines = [l for l in md.splitlines() if l.startswith("|")]
  assert lines[0].startswith("| Method | Clean Acc. (%) | DS (0.5x) |")
  assert len(lines) == 2 + 4
  resnet, dct, hifi, avg = ([c.strip() for c in l.strip("|").split("|")] for l in lines[2:])
  assert resnet[0] == "ResNet-50" and avg[0] == "Avg"
  assert hifi[1] == "**96.8**" and resnet[1] == "<u>90.0</u>" and dct[1] == "75.0"
  assert dct[7] == "–" and dct[8] == "–"  # Blur (σ=5) and Avg missing
  assert resnet[9] == "**50.0**/<u>20.0</u>"
  assert dct[9] == "**50.0**/–"
  assert hifi[9] == "<u>40.0</u>/**25.0**"
  assert resnet[11] == "–"  # no bedroom run
  assert avg[1] == "87.3" and "**" not in lines[-1] and "<u>" not in lines[-1]


def test_csv_round_trip(runs_dir):
  table = report.table3(report.load_runs([runs_dir]))
  rows = list(csv.reader(io.StringIO(report.to_csv(table))))
  assert rows[0] == ["method"] + list(table.keys)
  methods = rows[1:len(table.rows) + 1]
  assert [r[0] for r in methods] == list(table.rows)
  got = np.array([[float(x) if x else np.nan for x in r[1:]] for r in methods])
  np.testing.assert_array_equal(got, table.values)  # full precision, NaN as empty
  # Then one row per baseline the runs recorded, in the clean columns.
  baselines = {r[0]: r[1:] for r in rows[len(table.rows) + 1:]}
  assert set(baselines) == {f"baseline: {k}" for k in table.baselines}
  chance = baselines["baseline: chance"]
  assert float(chance[table.keys.index("standard/clean")]) == pytest.approx(100 / 3)
  assert chance[table.keys.index("standard/ds_0.5")] == ""
  assert rows[2][table.keys.index("standard/avg") + 1] == ""


def test_latex(runs_dir):
  table = report.table3(report.load_runs([runs_dir]))
  tex = report.to_latex(table)
  assert tex.startswith(r"\begin{tabular}") and tex.rstrip().endswith(r"\end{tabular}")
  for rule in (r"\toprule", r"\midrule", r"\bottomrule", r"\cmidrule(lr){2-9}",
               r"\multicolumn{8}{c}{Standard Task}", r"\multicolumn{5}{c}{Semantic Task}"):
    assert rule in tex
  assert r"Clean Acc. (\%)" in tex and r"Blur ($\sigma$=3)" in tex
  rows = {l.split(" & ")[0]: l.split(" & ") for l in tex.splitlines() if l.endswith(r"\\")}
  assert rows["HiFi-Net"][1] == r"\textbf{96.8}"
  assert rows["ResNet-50"][1] == r"\underline{90.0}"
  assert rows["ResNet-50"][9] == r"\textbf{50.0}/\underline{20.0}"
  assert rows["DCT-CNN"][8] == "--"
  assert rows["Avg"][1] == "87.3"
  assert r"\textbf" not in " ".join(rows["Avg"])
  assert tex.count(r"\textbf") == int((table.marks == report.BEST).sum())
  assert tex.count(r"\underline") == int((table.marks == report.SECOND).sum())
  assert report.latex_escape("a_b & 5% #1") == r"a\_b \& 5\% \#1"


def test_confusion_plots(runs_dir, tmp_path):
  runs = report.load_runs([runs_dir])
  # One name per run and eval: 3 standard, 6 semantic, the open-set run, resnet50's val eval.
  names = {report.confusion_filename(r, e) for r in runs for e in r["evals"]}
  assert len(names) == 11
  assert "confusion_hifi_net_semantic_cat_test.png" in names
  assert all(":" not in n and "/" not in n for n in names)

  out = tmp_path / "plots"
  out.mkdir()
  paths = report.write_confusion_plots([r for r in runs if r["method"] == "resnet50"], str(out))
  assert sorted(os.path.basename(p) for p in paths) == [
      "confusion_resnet50_openset_test.png", "confusion_resnet50_semantic_FFHQ_test.png",
      "confusion_resnet50_semantic_cat_test.png", "confusion_resnet50_standard_test.png",
      "confusion_resnet50_standard_val.png"]
  with Image.open(out / "confusion_resnet50_standard_test.png") as img:
    assert img.format == "PNG" and img.size[0] > 100 and img.size[1] > 100
    img.verify()


def test_plot_confusion_without_level_raises(tmp_path):
  run = make_run("m", "standard", [None, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5])
  with pytest.raises(ValueError, match="level 0"):
    report.plot_confusion(run, "test", tmp_path / "x.png")


def test_duplicate_runs(tmp_path):
  old = write_run(tmp_path, "old", make_run("resnet50", "standard", [0.1] * 7,
                                            created="2026-11-20T10:00:00+00:00"))
  new = write_run(tmp_path, "new", make_run("resnet50", "standard", [0.9] * 7,
                                            created="2026-11-22T09:00:00+01:00"))
  with pytest.raises(ValueError, match="two runs") as err:
    report.load_runs([tmp_path])
  assert os.path.join(old, "results.json") in str(err.value)
  assert os.path.join(new, "results.json") in str(err.value)
  for order in ([old, new], [new, old]):
    runs = report.load_runs(order, latest=True)
    assert len(runs) == 1 and runs[0]["_path"] == os.path.join(new, "results.json")
  # The same run reached twice (its folder and its parent) is one run, not a duplicate.
  assert len(report.load_runs([old, os.path.join(old, "results.json")])) == 1


def test_load_errors(tmp_path):
  with pytest.raises(FileNotFoundError):
    report.load_runs([tmp_path / "nope"])
  with pytest.raises(ValueError, match="no results.json"):
    report.load_runs([tmp_path])
  bad = tmp_path / "bad" / "results.json"
  bad.parent.mkdir()
  bad.write_text(json.dumps({"format": "something.else"}))
  with pytest.raises(ValueError, match="not an iab_jax.results"):
    report.load_runs([bad])
  with pytest.raises(ValueError, match="standard"):
    report.table3([])


def test_cli(runs_dir, tmp_path, capsys):
  # Two of the fixture's methods, named as two --runs folders, keep the plotting short.
  out = tmp_path / "report"
  argv = ["--runs", os.path.join(runs_dir, "a_resnet50"), os.path.join(runs_dir, "c_hifi_net"),
          "--out", str(out)]
  assert report.main(argv) == 0
  printed = capsys.readouterr().out
  assert "| ResNet-50 |" in printed and "| HiFi-Net |" in printed and "DCT-CNN" not in printed
  assert "**96.8**" in printed
  for name in ("table3.md", "table3.csv", "table3.tex"):
    assert (out / name).stat().st_size > 0
  assert (out / "table3.md").read_text(encoding="utf-8") == printed
  # resnet50: standard (test and val), cat, FFHQ; hifi_net: standard, cat, bedroom, dog.
  assert len(glob.glob(str(out / "confusion_*.png"))) == 8

  # The one test that pays for TensorFlow: the CLU writer's scalars read back from the events.
  import tensorflow as tf
  events = glob.glob(str(out / "events.out.tfevents*"))
  assert events
  scalars, texts = {}, {}
  for event in tf.compat.v1.train.summary_iterator(events[0]):
    for v in event.summary.value:
      array = tf.make_ndarray(v.tensor)
      (texts if array.dtype == object else scalars)[v.tag] = array
  assert scalars["table3/resnet50/standard/clean"] == pytest.approx(90.0)
  assert scalars["table3/hifi_net/semantic/cat/degraded"] == pytest.approx(25.0)
  assert scalars["table3/avg/standard/clean"] == pytest.approx((90 + 96.8) / 2)
  assert "table3/resnet50/semantic/bedroom/clean" not in scalars  # missing cells are not written
  assert "**96.8**" in texts["table3"].item().decode()


def test_cli_duplicates_and_latest(tmp_path, capsys):
  runs = tmp_path / "runs"
  write_run(runs, "a", make_run("resnet50", "standard", [0.2] * 7,
                                created="2026-11-20T10:00:00+00:00"))
  write_run(runs, "b", make_run("resnet50", "standard", [0.7] * 7,
                                created="2026-11-21T10:00:00+00:00"))
  out = tmp_path / "out"
  assert report.main(["--runs", str(runs), "--out", str(out), "--no_summaries"]) == 2
  assert "--latest" in capsys.readouterr().err
  assert report.main(["--runs", str(runs), "--out", str(out), "--latest", "--no_summaries"]) == 0
  rows = list(csv.reader(open(out / "table3.csv")))
  assert float(rows[1][1]) == pytest.approx(70.0)
  assert not glob.glob(str(out / "events.out.tfevents*"))
  capsys.readouterr()


def test_baselines_under_the_table(tmp_path):
  runs = tmp_path / "runs"
  run = make_run("resnet50", "standard", [0.9] * 7)
  run["baselines"] = {"chance": 0.25, "metadata": {"accuracy": 0.625}}
  write_run(runs, "a", run)
  cat = make_run("resnet50", "semantic:cat", [0.5] * 7)
  cat["baselines"] = {"chance": 0.25, "metadata": {"accuracy": 0.5}}
  write_run(runs, "b", cat)
  table = report.table3(report.load_runs([runs]))
  assert table.baselines["chance"] == {"standard/clean": 25.0, "semantic/cat/clean": 25.0}
  assert table.baselines["metadata"] == {"standard/clean": 62.5, "semantic/cat/clean": 50.0}
  note = report.to_markdown(table).strip().splitlines()[-1]
  assert note.startswith("Baselines, clean accuracy (%): chance: standard 25.0, Train on Cat 25.0")
  assert "file format and size" in note and "standard 62.5, Train on Cat 50.0" in note
  tex = report.to_latex(table)
  assert r"\footnotesize Baselines" in tex and tex.rstrip().endswith(r"\end{tabular}")
  # A run without recorded baselines still gives chance from its classes.
  plain = make_run("resnet50", "standard", [0.9] * 7)
  assert report.table3([plain]).baselines == {"chance": {"standard/clean": 100 / len(CLASSES)}}


def test_group_runs_fill_the_standard_columns_in_their_own_row():
  standard = make_run("resnet50", "standard", [0.9] * 7)
  group = make_run("resnet50", "group", [0.4] * 7)
  table = report.table3([standard, group])
  assert table.rows == ("ResNet-50", "ResNet-50 (group split)", report.AVG_ROW)
  clean = table.keys.index("standard/clean")
  assert table.values[0, clean] == pytest.approx(90.0)
  assert table.values[1, clean] == pytest.approx(40.0)
  assert table.methods == ("resnet50", "resnet50:group")


# ---------------------------------------------------------------------------------------------
# OFA's tables: image-to-model (Tables 1-2) and open-set (Tables 4-5).


def i2m_entry(per_target: dict) -> dict:
  values = list(per_target.values())
  return {"level": 0, "level_name": "clean", "auc_ovo_per_target": per_target,
          "auc_ovo_mean": float(np.mean(values)), "auc_ovo_std": float(np.std(values)),
          "auc_ovo": {}, "auc_ovr": {}, "auc_ovr_mean": 0.5, "auc_ovr_std": 0.0}


def open_set_entry(acc, auroc, oscr) -> dict:
  return {"level": 0, "level_name": "clean", "closed_set_accuracy": acc, "auroc": auroc,
          "oscr": oscr, "num_known": 10, "num_unknown": 5, "per_unknown_generator": {}}


def ofa_runs() -> list[dict]:
  runs = []
  ofa = make_run("ofa", "standard", [0.9] * 7)
  ofa["method_display"] = "OFA"
  ofa["evals"]["i2m"] = {"split": "test", "levels": {"0": i2m_entry(
      {"SD_v1.5": 0.9, "DALLE-3": 0.8, "4o": 0.7})}}
  runs.append(ofa)
  clip = make_run("clip_lr", "standard", [0.5] * 7)
  clip["method_display"] = "CLIP-LR"
  clip["evals"]["i2m"] = {"split": "test", "levels": {"0": i2m_entry({"SD_v1.5": 0.6,
                                                                      "4o": 0.5})}}
  runs.append(clip)
  folds = {("ofa", 0): (0.98, 0.90, 0.88), ("ofa", 1): (0.96, 0.80, 0.78),
           ("resnet50", 0): (0.9, 0.7, 0.65)}
  for (method, fold), numbers in folds.items():
    run = make_run(method, f"openset:{fold}", [numbers[0]] * 7)
    run["evals"]["openset"] = {"split": "test", "unknown_split": "test_unknown",
                               "levels": {"0": open_set_entry(*numbers)}}
    runs.append(run)
  return runs


def test_image_to_model_table():
  table = report.image_to_model_table(ofa_runs())
  assert table.rows == ("4o", "DALLE-3", "SD_v1.5", "Avg")  # the registry's class order
  assert table.columns == ("OFA (standard)", "CLIP-LR (standard)")
  np.testing.assert_allclose(table.values[:3], [[70, 50], [80, np.nan], [90, 60]])
  np.testing.assert_allclose(table.values[3], [80, 55])
  np.testing.assert_allclose(table.stds[3], [np.std([90, 80, 70]), 5])
  assert np.isnan(table.stds[:3]).all()
  md = report.grid_markdown(table)
  assert "| 4o | 70.00 | 50.00 |" in md and "| DALLE-3 | 80.00 | – |" in md
  assert f"| Avg | 80.00±{np.std([90, 80, 70]):.2f} | 55.00±5.00 |" in md
  rows = list(csv.reader(io.StringIO(report.grid_csv(table))))
  assert rows[0] == ["generator", "OFA (standard)", "OFA (standard) std", "CLIP-LR (standard)",
                     "CLIP-LR (standard) std"]
  assert rows[2][:3] == ["DALLE-3", "80.0", ""] and float(rows[4][4]) == pytest.approx(5.0)
  assert report.image_to_model_table([make_run("resnet50", "standard", [0.5] * 7)]) is None


def test_open_set_table():
  table = report.open_set_table(ofa_runs())
  assert table.rows == ("ofa", "ResNet-50")
  assert table.columns == ("Closed acc", "Fold 0 AUROC", "Fold 0 OSCR", "Fold 1 AUROC",
                           "Fold 1 OSCR", "Avg AUROC", "Avg OSCR")
  np.testing.assert_allclose(table.values[0], [97, 90, 88, 80, 78, 85, 83])
  np.testing.assert_allclose(table.stds[0, [0, 5, 6]], [1, 5, 5])
  np.testing.assert_allclose(table.values[1], [90, 70, 65, np.nan, np.nan, 70, 65])
  md = report.grid_markdown(table)
  assert "| ofa | 97.00±1.00 | 90.00 | 88.00 | 80.00 | 78.00 | 85.00±5.00 | 83.00±5.00 |" in md
  assert "| ResNet-50 | 90.00±0.00 | 70.00 | 65.00 | – | – | 70.00±0.00 | 65.00±0.00 |" in md
  assert report.open_set_table([make_run("resnet50", "standard", [0.5] * 7)]) is None


def test_cli_writes_the_ofa_tables(tmp_path, capsys):
  runs = tmp_path / "runs"
  for i, run in enumerate(ofa_runs()):
    write_run(runs, f"run{i}", run)
  out = tmp_path / "out"
  assert report.main(["--runs", str(runs), "--out", str(out), "--no_summaries"]) == 0
  printed = capsys.readouterr().out
  for name in ("table3.md", "image_to_model.md", "image_to_model.csv", "open_set.md",
               "open_set.csv"):
    assert (out / name).read_text(encoding="utf-8") in printed or name.endswith(".csv")
  # Open-set runs alone: no Table 3, still the open-set table.
  only = tmp_path / "only"
  write_run(only, "a", ofa_runs()[2])
  assert report.main(["--runs", str(only), "--out", str(tmp_path / "out2"),
                      "--no_summaries"]) == 0
  written = sorted(os.listdir(tmp_path / "out2"))
  assert written == ["confusion_ofa_openset_0_test.png", "open_set.csv", "open_set.md"]
  assert "| ofa | 98.00±0.00 | 90.00 | 88.00 |" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# Detection tables (the ACM paper's Tables 1-3) from evals of type detection.


def detection_level(level: int, per_generator: dict, trained_on=()) -> dict:
  """A detection eval's level entry: per_generator {gen: (ap, accuracy)}, the mean over them."""
  per = {g: {"ap": ap, "accuracy": acc, "f1": 0.5, "real_accuracy": 0.5, "fake_accuracy": 0.5,
             "num_real": 10, "num_fake": 10} for g, (ap, acc) in per_generator.items()}
  mean = {k: float(np.mean([m[k] for m in per.values()]))
          for k in ("ap", "accuracy", "f1", "real_accuracy", "fake_accuracy")}
  return {"level": level, "level_name": degradations.LEVEL_NAMES[level], **mean, "mean": mean,
          "per_generator": per, "pooled": dict(per[next(iter(per))]),
          "trained_on": list(trained_on), "num_real": 10, "num_fake": 10 * len(per)}


def detection_runs() -> list[dict]:
  resnet = make_run("resnet50", "standard", [0.9] * 7)
  resnet["evals"]["detection"] = {"split": "test", "levels": {
      "0": detection_level(0, {"SDXL": (0.9, 0.8), "4o": (0.7, 0.6), "my_gan": (0.5, 0.4)},
                           trained_on=("4o", "SDXL")),
      "3": detection_level(3, {"SDXL": (0.6, 0.5), "4o": (0.5, 0.5), "my_gan": (0.4, 0.3)},
                           trained_on=("4o", "SDXL"))}}
  acm = make_run("acm", "detection:SD1_5", [0.5] * 7)
  acm["method_display"] = "ACM"
  acm["config"] = {"acm": {"source": "real"}, "input": {"train_fraction": 0.1}}
  acm["evals"] = {"detection": {"split": "test", "levels": {
      "0": detection_level(0, {"SD1_5": (1.0, 0.95), "4o": (0.8, 0.7)}, trained_on=("SD1_5",))}}}
  # A run without a real class: its detection eval was skipped, and must not show.
  folders = make_run("small_cnn", "group", [0.8] * 7)
  folders["evals"]["detection"] = {"skipped": "the run's classes have no class of real images"}
  return [resnet, acm, folders, make_run("dct_cnn", "standard", [0.7] * 7)]


def test_detection_tables():
  runs = detection_runs()
  table = report.detection_table(runs, "ap")
  assert table.rows == ("ResNet-50 (standard)", "ACM (detection:SD1_5, train 10%)")
  # The registry's generator order, unregistered names last, then the Avg.
  assert table.columns == ("4o", "SD1_5", "SDXL", "my_gan", "Avg")
  np.testing.assert_allclose(table.values, [[70, np.nan, 90, 50, 70], [80, 100, np.nan, np.nan,
                                                                        90]])
  acc = report.detection_table(runs, "accuracy")
  np.testing.assert_allclose(acc.values[0], [60, np.nan, 80, 40, 60])
  assert "ACC (%)" in acc.title and "AP (%)" in table.title
  md = report.grid_markdown(table)
  assert "| Method | 4o | SD1_5 | SDXL | my_gan | Avg |" in md
  assert "| ACM (detection:SD1_5, train 10%) | 80.00 | 100.00 | – | – | 90.00 |" in md
  rows = list(csv.reader(io.StringIO(report.grid_csv(table))))
  assert rows[0] == ["method", "4o", "SD1_5", "SDXL", "my_gan", "Avg"]
  assert rows[1] == ["ResNet-50 (standard)", "70.0", "", "90.0", "50.0", "70.0"]
  # At a degraded level only the runs that scored it.
  degraded = report.detection_table(runs, "ap", level=3)
  assert degraded.rows == ("ResNet-50 (standard)",) and "JPEG q65" in degraded.title
  np.testing.assert_allclose(degraded.values, [[50, 60, 40, 50]])
  with pytest.raises(ValueError, match="detection metric 'auc'"):
    report.detection_table(runs, "auc")


def test_detection_sources_table():
  table = report.detection_sources_table(detection_runs())
  assert table.columns == ("Seen AP", "Seen ACC", "Unseen AP", "Unseen ACC", "Avg AP", "Avg ACC")
  np.testing.assert_allclose(table.values, [[80, 70, 50, 40, 70, 60], [100, 95, 80, 70, 90,
                                                                        82.5]])
  md = report.grid_markdown(table)
  assert "| ResNet-50 (standard) | 80.00 | 70.00 | 50.00 | 40.00 | 70.00 | 60.00 |" in md
  # A run trained on every generator it is tested on has no unseen column.
  run = detection_runs()[1]
  run["evals"]["detection"]["levels"]["0"]["trained_on"] = ["SD1_5", "4o"]
  np.testing.assert_allclose(report.detection_sources_table([run]).values,
                             [[90, 82.5, np.nan, np.nan, 90, 82.5]])


def test_detection_levels_table():
  runs = detection_runs()
  table = report.detection_levels_table(runs, "ap")
  assert table.columns == degradations.LEVEL_NAMES
  assert table.rows == ("ResNet-50 (standard)", "ACM (detection:SD1_5, train 10%)")
  want = np.full((2, 7), np.nan)
  want[0, 0], want[0, 3], want[1, 0] = 70, 50, 90
  np.testing.assert_allclose(table.values, want)
  np.testing.assert_allclose(report.detection_levels_table(runs, "accuracy").values[0, [0, 3]],
                             [60, 130 / 3])
  # The clean level alone is detection_table's Avg column: no table of its own.
  assert report.detection_levels_table(runs[1:], "ap") is None


def test_no_detection_tables_without_detection_evals():
  runs = detection_runs()[2:]  # a skipped detection eval and a run without one
  assert report.detection_table(runs) is None
  assert report.detection_sources_table(runs) is None
  assert report.detection_levels_table(runs) is None
  assert report.detection_grids(runs) == {}


def test_cli_writes_the_detection_tables(tmp_path, capsys):
  runs = tmp_path / "runs"
  for i, run in enumerate(detection_runs()):
    write_run(runs, f"run{i}", run)
  out = tmp_path / "out"
  assert report.main(["--runs", str(runs), "--out", str(out), "--no_summaries"]) == 0
  printed = capsys.readouterr().out
  stems = ("detection_ap", "detection_accuracy", "detection_sources", "detection_levels_ap",
           "detection_levels_accuracy")
  for stem in stems:
    assert (out / f"{stem}.md").read_text(encoding="utf-8") in printed
    assert (out / f"{stem}.csv").stat().st_size > 0
  # Detection runs alone: no Table 3, still the detection tables.
  only = tmp_path / "only"
  write_run(only, "a", detection_runs()[1])
  assert report.main(["--runs", str(only), "--out", str(tmp_path / "out2"),
                      "--no_summaries"]) == 0
  assert sorted(os.listdir(tmp_path / "out2")) == sorted(
      f"{s}.{e}" for s in stems[:3] for e in ("md", "csv"))
  assert "| ACM (detection:SD1_5, train 10%) | 80.00 | 100.00 | 90.00 |" in (
      capsys.readouterr().out)


def test_print_table_shows_the_detection_tables(capsys):
  from iab_jax import cli

  cli.print_table(detection_runs()[0])
  printed = capsys.readouterr().out
  assert "| ResNet-50 (standard) | 70.00 | 90.00 | 50.00 | 70.00 |" in printed  # AP
  assert "| ResNet-50 (standard) | 60.00 | 80.00 | 40.00 | 60.00 |" in printed  # ACC
  assert "Seen AP" in printed and "JPEG q65" in printed and "Clean Acc. (%)" in printed
  cli.print_table(detection_runs()[2])  # skipped: Table 3's group row only
  assert "Detection" not in capsys.readouterr().out


def test_runs_on_fractions_of_the_training_set_are_runs_of_their_own(tmp_path):
  paths = []
  for name, fraction in (("a", 1.0), ("b", 0.1), ("c", 0.1)):
    run = make_run("acm", "detection:SD1_5", [0.5] * 7)
    run["config"] = {"input": {"train_fraction": fraction}}
    path = tmp_path / name / "results.json"
    path.parent.mkdir()
    path.write_text(json.dumps(run))
    paths.append(str(path))
  assert len(report.load_runs(paths[:2])) == 2
  with pytest.raises(ValueError, match="task 'detection:SD1_5', train 10% has two runs"):
    report.load_runs(paths)
