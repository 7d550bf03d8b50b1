"""The emoji image sets and their held-out split: a fixed function of the emoji's name
(skin tones together, the same emoji in every set), sets concatenated and verified by
sha256 (synthetic tarballs, and the real twitter package from npm in one test), the
config keys checked by name, and completion reading the held-out emoji."""

import dataclasses
import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from crvae_jax import config_checks
from crvae_jax.data import emoji, rgb
from experiments.configs import rgb as rgb_configs
from test_rgb_data import _emoji_tarball, _png


def _names(n=2000, seed=0):
  rng = np.random.default_rng(seed)
  return sorted({f"{c:x}" for c in rng.integers(0x1f300, 0x1faff, n)} |
                {f"{c:x}-200d-{d:x}" for c, d in rng.integers(0x1f300, 0x1faff, (n, 2))})


def test_the_split_is_a_fixed_function_of_the_name_with_skin_tones_together():
  assert emoji.split_key("1f44b-1f3fb") == "1f44b"
  assert emoji.split_key("1f9d1-1f3fb-200d-1f91d-200d-1f9d1-1f3ff") == (
      "1f9d1-200d-1f91d-200d-1f9d1")
  assert emoji.split_key("1f3fb") == "1f3fb"  # a skin-tone swatch is an emoji of its own
  for base in _names(200):
    assert len({emoji.is_heldout(base + t) for t in ("", "-1f3fb", "-1f3fc", "-1f3ff")}) == 1
  names = _names()
  train, heldout = emoji.split_indices(names, "train"), emoji.split_indices(names, "heldout")
  np.testing.assert_array_equal(heldout, emoji.split_indices(list(names), "heldout"))
  assert not set(train) & set(heldout)
  np.testing.assert_array_equal(np.sort(np.concatenate([train, heldout])),
                                emoji.split_indices(names, "all"))
  assert 0.07 < len(heldout) / len(names) < 0.13, len(heldout) / len(names)
  # A name's fate does not depend on the other names in the list.
  assert [names[i] for i in heldout] == [n for n in names if emoji.is_heldout(n)]
  with pytest.raises(ValueError, match="data.emoji_split='test'"):
    emoji.split_indices(names, "test")


def _synthetic_sets(tmp_path, monkeypatch, names):
  """Tarballs of the same names for 'google' and 'twitter' (another colour each), and
  EMOJI_SETS entries pinning their sha256s as the real ones do. {set: tarball path}."""
  paths = {}
  for k, name in enumerate(("google", "twitter")):
    spec = emoji.EMOJI_SETS[name]
    members = {}
    for i, n in enumerate(names):
      rgba = np.zeros((64, 64, 4), np.uint8)
      rgba[8:56, 8:56] = (40 * k, (3 * i) % 256, 255 - (7 * i) % 256, 255)
      members[spec.member_prefix + n + ".png"] = _png(Image.fromarray(rgba, "RGBA"))
    path = _emoji_tarball(tmp_path / spec.tarball_name, members)
    images, decoded_names, _ = emoji.decode_tarball(path, name, check_sha256=False)
    monkeypatch.setitem(emoji.EMOJI_SETS, name, dataclasses.replace(
        spec, tarball_sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        count=len(names), array_sha256=hashlib.sha256(images.tobytes()).hexdigest(),
        names_sha256=emoji.names_sha256(decoded_names.tolist())))
    paths[name] = path
  return paths


def test_sets_are_verified_and_concatenated_with_the_same_emoji_held_out_in_each(
    tmp_path, monkeypatch):
  names = _names(40, seed=1)
  assert 0 < sum(map(emoji.is_heldout, names)) < len(names)
  paths = _synthetic_sets(tmp_path, monkeypatch, names)
  tarballs = f"{paths['google']},{paths['twitter']}"
  both = emoji.load_emoji_split("google,twitter", "heldout", tarballs=tarballs)
  held = [n for n in sorted(names) if emoji.is_heldout(n)]
  assert both.names.tolist() == held + held
  assert both.sets.tolist() == ["google"] * len(held) + ["twitter"] * len(held)
  assert not np.array_equal(both.images[:len(held)], both.images[len(held):])
  train = emoji.load_emoji_split("google,twitter", "train", tarballs=tarballs)
  assert not set(train.names) & set(held) and len(train.names) == 2 * (len(names) - len(held))

  # npm (faked: copies the tarball) fills a cache per set; then the cache alone is used.
  copies = []
  def fake_npm(spec, tarball_name, dest_dir, **kwargs):
    copies.append(spec)
    target = tmp_path / "npm" / tarball_name
    target.parent.mkdir(exist_ok=True)
    target.write_bytes(paths[spec.split("-")[2].split("@")[0]].read_bytes())
    return target
  monkeypatch.setattr(emoji, "npm_pack", fake_npm)
  cache = tmp_path / "cache"
  cached = emoji.load_emoji_split("google,twitter", "heldout", cache_dir=cache)
  np.testing.assert_array_equal(cached.images, both.images)
  assert copies == ["emoji-datasource-google@16.0.0", "emoji-datasource-twitter@16.0.0"]
  assert sorted(p.name for p in cache.iterdir()) == ["emoji_google_64.npz",
                                                     "emoji_twitter_64.npz"]
  emoji.load_emoji_split("twitter", "all", cache_dir=cache)
  assert len(copies) == 2  # from the cache

  # A corrupt tarball of the new set is refused before it is read.
  data = bytearray(paths["twitter"].read_bytes())
  data[len(data) // 2] ^= 1
  bad = tmp_path / "bad.tgz"
  bad.write_bytes(bytes(data))
  with pytest.raises(emoji.EmojiDataError,
                     match="bad.tgz: sha256 .* is not that of emoji-datasource-twitter"):
    emoji.load_emoji_split("google,twitter", "all", tarballs=f"{paths['google']},{bad}")
  with pytest.raises(emoji.EmojiDataError, match="data.emoji_tarball names 1 tarball"):
    emoji.load_emoji_split("google,twitter", "all", tarballs=str(paths["google"]))
  # A tarball given for the wrong set fails its sha256 check too.
  with pytest.raises(emoji.EmojiDataError, match="not that of emoji-datasource-google"):
    emoji.load_emoji_split("google", "all", tarballs=str(paths["twitter"]))


def test_the_real_twitter_set_from_npm_is_verified_and_split_like_google(tmp_path):
  path = emoji.npm_pack("emoji-datasource-twitter@16.0.0",
                        "emoji-datasource-twitter-16.0.0.tgz", tmp_path)
  images, names, _ = emoji.load_emoji("twitter", tarball=path)  # every sha256 checked
  assert images.shape == (3786, 64, 64, 3)
  assert 0.3 < float((images == 255).mean()) < 0.6  # on white, not blank
  # The names are google's (the same pinned sha256), so the same emoji are held out.
  assert emoji.names_sha256(names.tolist()) == emoji.EMOJI_SETS["google"].names_sha256
  heldout = emoji.split_indices(names.tolist(), "heldout")
  assert len(heldout) == 337  # 8.9%: groups of skin tones make it coarser than 10%
  assert emoji.EMOJI_SETS["google"].array_sha256 == (
      "4d7dcb6041f5b93d54200590ac8934be94b5320ee30c23a1ab5c292f0b019612")


def test_emoji_config_keys_are_checked_by_name():
  def check(**changes):
    c = rgb_configs.get_config("emoji_crvaegan,cpu")
    for key, value in changes.items():
      section, name = key.split("__")
      c[section][name] = value
    config_checks.check_rgb_config(c, 1)
  check(data__emoji_sets="twitter, google", data__emoji_split="all")
  for changes, key in (({"data__emoji_sets": "google,apple"}, "data.emoji_sets='google,apple'"),
                       ({"data__emoji_sets": "google,google"}, "data.emoji_sets"),
                       ({"data__emoji_split": "test"}, "data.emoji_split='test'"),
                       ({"data__emoji_sets": "google", "data__emoji_tarball": "a.tgz,b.tgz"},
                        "data.emoji_tarball"),
                       ({"completion__emoji_split": "val"}, "completion.emoji_split='val'"),
                       ({"data__emoji_categories": "Smileys"},
                        "data.emoji_categories='Smileys'"),
                       ({"data__emoji_categories": "flags,Flags"}, "data.emoji_categories")):
    with pytest.raises(config_checks.ConfigError, match=key):
      check(**changes)


def test_completion_reads_the_heldout_emoji_and_training_the_rest(tmp_path, monkeypatch):
  from crvae_jax import completion  # pylint: disable=g-import-not-at-top
  names = _names(40, seed=2)
  paths = _synthetic_sets(tmp_path, monkeypatch, names)
  c = rgb_configs.get_config("emoji_vaegan,cpu")
  c.data.emoji_sets = "twitter"
  c.data.emoji_categories = ""  # synthetic names have no category
  c.data.emoji_tarball = str(paths["twitter"])
  held = sum(map(emoji.is_heldout, names))
  assert len(completion.completion_source(c)) == held
  assert len(rgb.open_source(c.data)) == len(names) - held  # data.emoji_split='train'


def test_a_run_on_other_emoji_refuses_to_resume_and_old_workdirs_mean_all_of_google():
  from crvae_jax.train import checkpoints  # pylint: disable=g-import-not-at-top
  config = rgb_configs.get_config("emoji_crvaegan,cpu")
  saved = json.loads(config.to_json_best_effort())
  assert checkpoints.config_differences(saved, config) == []
  other = json.loads(config.to_json_best_effort())
  other["data"]["emoji_split"] = "all"
  assert checkpoints.config_differences(other, config) == [
      "data.emoji_split: 'all' (workdir) != 'train' (now)"]
  # A config.json written before the keys existed trained on all of the Noto set.
  legacy = json.loads(config.to_json_best_effort())
  del legacy["data"]["emoji_sets"], legacy["data"]["emoji_split"]
  del legacy["data"]["emoji_categories"]
  assert checkpoints.config_differences(legacy, config) == [
      "data.emoji_categories: '' (workdir) != 'Smileys & Emotion' (now)",
      "data.emoji_sets: 'google' (workdir) != 'google,twitter' (now)",
      "data.emoji_split: 'all' (workdir) != 'train' (now)"]
  with config.unlocked():
    config.data.emoji_sets, config.data.emoji_split = "google", "all"
    config.data.emoji_categories = ""
  assert checkpoints.config_differences(legacy, config) == []
  folder = rgb_configs.get_config("emoji_crvaegan,cpu")
  with folder.unlocked():
    folder.data.source = "folder"
  # Not an emoji run: the emoji keys are not read, but the changed source is refused.
  assert checkpoints.config_differences(legacy, folder) == [
      "data.source: 'emoji' (workdir) != 'folder' (now)"]


def test_the_category_table_names_every_emoji_once():
  table = json.loads(emoji.CATEGORY_TABLE.read_text(encoding="utf-8"))
  assert set(table["categories"]) == set(emoji.CATEGORIES)
  names = [n for members in table["categories"].values() for n in members]
  assert len(names) == len(set(names)) == emoji.EMOJI_SETS["google"].count
  # In the decoder's order (by file name), they are exactly the sets' pinned names.
  ordered = [f[:-len(".png")] for f in sorted(n + ".png" for n in names)]
  assert emoji.names_sha256(ordered) == emoji.EMOJI_SETS["google"].names_sha256
  assert len(table["categories"]["Smileys & Emotion"]) == 169
  assert emoji.categories_of(["1f600", "1f44b-1f3fb", "1f1e6-1f1e8"]).tolist() == [
      "Smileys & Emotion", "People & Body", "Flags"]  # skin tones: their base's category
  with pytest.raises(emoji.EmojiDataError, match="no category for"):
    emoji.categories_of(["1f600", "zzzz"])
  # category_table reads emoji-data's format.
  sample = [{"image": "1f44b.png", "category": "People & Body",
             "skin_variations": {"1F3FB": {"image": "1f44b-1f3fb.png"}}},
            {"image": "1f600.png", "category": "Smileys & Emotion"}]
  assert emoji.category_table(json.dumps(sample).encode()) == {
      "1f44b": "People & Body", "1f44b-1f3fb": "People & Body",
      "1f600": "Smileys & Emotion"}


def test_categories_filter_each_set_after_the_split(tmp_path, monkeypatch):
  table = json.loads(emoji.CATEGORY_TABLE.read_text(encoding="utf-8"))["categories"]
  smileys, flags = table["Smileys & Emotion"], table["Flags"][:30]  # 19 smileys held out
  names = sorted(smileys + flags, key=lambda n: n + ".png")
  paths = _synthetic_sets(tmp_path, monkeypatch, names)
  assert emoji.parse_categories(" smileys & emotion,FLAGS ") == ("Smileys & Emotion", "Flags")
  assert emoji.parse_categories("") == ()
  with pytest.raises(ValueError, match="data.emoji_categories='Smileys'"):
    emoji.parse_categories("Smileys")
  tarballs = f"{paths['google']},{paths['twitter']}"
  for split in ("train", "heldout"):
    got = emoji.load_emoji_split("google,twitter", split, tarballs=tarballs,
                                 categories="Smileys & Emotion")
    want = [n for n in names if n in smileys and emoji.is_heldout(n) == (split == "heldout")]
    assert got.names.tolist() == want * 2 and got.sets.tolist() == (
        ["google"] * len(want) + ["twitter"] * len(want))
  with pytest.raises(emoji.EmojiDataError, match="no google emoji of those categories"):
    emoji.load_emoji_split("google", "all", tarballs=str(paths["google"]),
                           categories="Objects")
  both = emoji.load_emoji_split("google", "all", tarballs=str(paths["google"]),
                                categories="Flags,Smileys & Emotion")
  assert both.names.tolist() == names
  c = rgb_configs.get_config("emoji_crvaegan,cpu")
  assert c.data.emoji_categories == "Smileys & Emotion"  # the CPU budget
  c.data.emoji_tarball = tarballs
  source = rgb.open_source(c.data)
  assert "categories Smileys & Emotion" in source.description
  assert len(source) == 2 * sum(not emoji.is_heldout(n) for n in smileys)
