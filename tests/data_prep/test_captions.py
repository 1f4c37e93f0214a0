"""The authors' caption files load with their ids; our writer reproduces their format."""

import csv

import pytest

from data_prep import captions
from iab_jax.data import generators


def test_packaged_captions_load_with_their_ids():
  by_class = captions.load(captions.PACKAGED_DIR)
  assert list(by_class) == list(generators.SEMANTIC_ORDER)
  assert all(len(caps) == 1000 for caps in by_class.values())
  cat = by_class["cat"]
  assert [c.caption_id for c in cat[:2]] == ["cat/p0", "cat/p1"]
  assert cat[0].image_name == "flickr_cat_000300.jpg"
  assert cat[0].text.startswith("A white and grey cat with green eyes")
  imagenet = by_class["ImageNet-1k"]
  assert imagenet[0].label == "kimono"
  assert len({c.image_path.split("/")[-2] for c in imagenet}) == 1000  # one per wnid
  assert by_class["COCO"][999].caption_id == "COCO/p999"
  # The full pools hold the authors' larger candidate lists.
  full = captions.load(captions.PACKAGED_DIR, ["COCO", "ImageNet-1k"], pool="full", limit=None)
  assert len(full["COCO"]) == 5000 and len(full["ImageNet-1k"]) == 5000
  assert [c.text for c in full["COCO"][:1000]] == [c.text for c in by_class["COCO"]]


def test_file_names_and_classes_round_trip():
  for semantic in generators.SEMANTIC_ORDER:
    assert captions.semantic_of_file(captions.file_name(semantic)) == semantic
    assert captions.semantic_of_file(captions.file_name(semantic, "full")) == semantic
  assert captions.file_name("church") == "Scene_LSUN_church.csv"
  assert captions.file_name("ImageNet-1k") == "imagenet-1k-new.csv"


def test_write_file_keeps_the_authors_columns(tmp_path):
  caps = captions.load(captions.PACKAGED_DIR, ["ImageNet-1k", "dog"], limit=3)
  for semantic, rows in caps.items():
    path = tmp_path / captions.file_name(semantic)
    captions.write_file(str(path), rows)
    assert captions.load_file(str(path)) == rows
    with open(path, newline="") as f:
      header = next(csv.reader(f))
    assert header == (["ImgPath", "Label", "Caption"] if semantic == "ImageNet-1k"
                      else ["ImgPath", "Caption"])


def test_bad_caption_files_name_the_problem(tmp_path):
  bad = tmp_path / "AnimalFace_cat.csv"
  bad.write_text("Path,Text\nx,y\n")
  with pytest.raises(ValueError, match="lacks column"):
    captions.load_file(str(bad))
  bad.write_text('ImgPath,Caption\na.jpg,fine\nb.jpg,"  "\n')
  with pytest.raises(ValueError, match="row 1 has an empty Caption"):
    captions.load_file(str(bad))
  with pytest.raises(ValueError, match="cannot tell the semantic class"):
    captions.load_file(str(tmp_path / "prompts.csv"))
  with pytest.raises(FileNotFoundError, match=r"no caption file for \['dog'\]"):
    captions.load(str(tmp_path), ["dog"])
  with pytest.raises(ValueError, match="unknown semantic"):
    captions.load(captions.PACKAGED_DIR, ["cats"])
