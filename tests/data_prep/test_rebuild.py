"""The whole rebuild, chained as a user runs it: sample real photos -> caption them -> generate
from those captions -> join -> split -> TensorFlow Datasets. Tiny sources and tiny random models;
each step reads what the previous one wrote."""

import collections

from data_prep import caption, captions, generate, merge, sample_real, split, tiny_pipelines
from iab_jax.data import records
from tests.data_prep import test_caption, test_sample_real


def test_real_to_captions_to_images_to_one_split_dataset(tmp_path):
  import tensorflow_datasets as tfds

  from iab_jax.data import tfds_builder

  flags, _ = test_sample_real.make_sources(str(tmp_path / "src"))
  real = tmp_path / "real"
  test_sample_real.run(real, *flags, "--count", "cat=3", "dog=3", "wild=0", "celebahq=0",
                       "FFHQ=3", "bedroom=0", "church=0", "classroom=0", "ImageNet-1k=0",
                       "COCO=3")

  vlm = str(tmp_path / "vlm")
  test_caption._save_vlm(vlm, test_caption._tokenizer(), scale=4.0)
  caps_dir = tmp_path / "captions"
  assert caption.main(["--real", str(real), "--out", str(caps_dir), "--model_id", vlm,
                       "--device", "cpu", "--dtype", "float32", "--per_class", "2",
                       "--max_new_tokens", "8", "--quiet"]) == 0
  by_class = captions.load(str(caps_dir))
  assert {s: len(c) for s, c in by_class.items()} == {"cat": 2, "dog": 2, "COCO": 2, "FFHQ": 2}
  real_keys = set(records.Dataset(str(real)).column("key"))
  assert all(c.image_path in real_keys for caps in by_class.values() for c in caps)

  generated = tmp_path / "generated"
  tiny = tiny_pipelines.build("SD1_5", str(tmp_path / "tiny_sd"))
  generate.main(["--model", "SD1_5", "--model_path", tiny, "--out", str(generated),
                 "--captions", str(caps_dir), "--size", "32", "--steps", "2", "--dtype", "float32",
                 "--quiet"])
  gen = records.Dataset(str(generated))
  assert len(gen) == 16
  by_id = captions.by_id(by_class)
  for i in range(len(gen)):
    rec = gen[i]
    assert rec.caption == by_id[rec.caption_id].text
    assert rec.extra["real_image"] in real_keys

  everything = tmp_path / "all"
  merge.merge(str(everything), [str(real), str(generated)], quiet=True)
  ds = records.Dataset(str(everything))
  assert ds.classes == ["SD1_5", "real"] and len(ds) == 12 + 16
  split.main(["--data", str(everything), "--protocol", "standard"])

  builder = tfds_builder.build(str(everything), "standard", str(tmp_path / "tfds"))
  manifest_sizes = {name: info.num_examples for name, info in builder.info.splits.items()}
  assert sum(manifest_sizes.values()) == len(ds)
  source = tfds.data_source("image_attribution_bench/standard", data_dir=str(tmp_path / "tfds"))
  labels = collections.Counter(int(source["train"][i]["label"])
                               for i in range(len(source["train"])))
  assert set(labels) == {0, 1}
