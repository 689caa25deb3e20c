"""Caption tokenizer: vocabularies of hand-made strings, counted by hand."""

import os
import subprocess
import sys

import numpy as np
import pytest

from vmjax.data import text, yt8m

# Word counts after NFKC and lowercasing: cat 4, dog 3, the 3, "!" 2, a 2, "," 1, fish 1, ran 1,
# sat 1 ("Ｃａｔ" is cat, "ﬁ" is fi).
TEXTS = ["The cat sat", "the CAT ran!", "a dog, a Cat", "Ｃａｔ dog dog ﬁsh", "the !"]
# By count, ties in code-point order ("dog" < "the", "!" < "a"); ids 2 (cat) to 10 (sat).
EXPECTED = ["[PAD]", "[UNK]", "cat", "dog", "the", "!", "a", ",", "fish", "ran", "sat"]


def _vocab(tokenizer: text.Tokenizer) -> list[str]:
    return tokenizer.tokens(range(tokenizer.vocab_size))


def test_most_frequent_words_get_the_ids_in_order():
    tokenizer = text.build_vocabulary(TEXTS, vocab_size=100)
    assert _vocab(tokenizer) == EXPECTED
    assert tokenizer.vocab_size == len(EXPECTED)
    small = text.build_vocabulary(TEXTS, vocab_size=5)
    assert _vocab(small) == EXPECTED[:5] and small.vocab_size == 5


def test_min_frequency_drops_rare_words():
    tokenizer = text.build_vocabulary(TEXTS, vocab_size=100, min_frequency=2)
    assert _vocab(tokenizer) == EXPECTED[:7]
    np.testing.assert_array_equal(tokenizer.encode("the fish", None), [4, text.UNK_ID])


def test_ids_are_below_vocab_size_and_never_pad():
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(50)]
    texts = [" ".join(rng.choice(words, 6)) for _ in range(40)]
    tokenizer = text.build_vocabulary(texts, vocab_size=20)
    assert tokenizer.vocab_size == 20
    for t in texts + ["never seen words ???"]:
        ids = tokenizer.encode(t, None)
        assert ids.dtype == np.int32 and len(ids) == len(t.split()) + 2 * ("???" in t)
        assert ids.min() >= 1 and ids.max() < 20


def test_special_tokens_and_unknown_words():
    tokenizer = text.build_vocabulary(TEXTS, vocab_size=100)
    assert tokenizer.tokens([0, 1]) == ["[PAD]", "[UNK]"]
    assert (text.PAD_ID, text.UNK_ID) == (0, 1)
    np.testing.assert_array_equal(tokenizer.encode("zebra cat", None), [1, 2])
    # The specials' strings in a caption are ordinary text, never id 0.
    assert tokenizer.tokens(tokenizer.encode("[PAD] cat", None)) == ["[UNK]"] * 3 + ["cat"]
    assert tokenizer.encode("", None).shape == (0,)


def test_case_and_unicode_normalisation():
    tokenizer = text.build_vocabulary(["Café naïve ﬁsh"], vocab_size=100)
    same = ["CAFÉ", "Cafe\u0301", "ＣＡＦＥ\u0301", "café"]  # upper, decomposed, fullwidth, plain
    assert {tuple(tokenizer.encode(t, None)) for t in same} == {
        (tokenizer.encode("café", None)[0],)
    }
    assert tokenizer.tokens(tokenizer.encode("FISH NAÏVE", None)) == ["fish", "naïve"]
    assert "ﬁsh" not in _vocab(tokenizer)


def test_encode_truncates_silently():
    tokenizer = text.build_vocabulary(TEXTS, vocab_size=100)
    full = tokenizer.encode("the cat sat, the dog ran!", None)
    np.testing.assert_array_equal(full, [4, 2, 10, 7, 4, 3, 9, 5])
    np.testing.assert_array_equal(tokenizer.encode("the cat sat, the dog ran!", 3), full[:3])
    assert tokenizer.encode("the cat", 0).shape == (0,)
    with pytest.raises(ValueError, match="max_tokens"):
        tokenizer.encode("the cat", -1)


def test_order_of_texts_does_not_change_the_vocabulary(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    text.build_vocabulary(TEXTS, vocab_size=8).save(a)
    text.build_vocabulary(reversed(TEXTS), vocab_size=8).save(b)
    assert a.read_bytes() == b.read_bytes()


def test_cli_in_another_process_writes_the_same_vocabulary(tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS) + "\r\n", encoding="utf-8")
    out = tmp_path / "vocab.json"
    env = dict(os.environ, PYTHONHASHSEED="123")
    proc = subprocess.run(
        [sys.executable, "-m", "vmjax.data.text", "--texts", str(texts), "--out", str(out)]
        + ["--vocab_size", "8"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert "vocabulary of 8 ids" in proc.stderr
    text.build_vocabulary(TEXTS, vocab_size=8).save(tmp_path / "here.json")
    assert out.read_bytes() == (tmp_path / "here.json").read_bytes()


def test_save_load_round_trip(tmp_path):
    tokenizer = text.build_vocabulary(TEXTS, vocab_size=100)
    tokenizer.save(tmp_path / "vocab.json")
    loaded = text.Tokenizer.load(tmp_path / "vocab.json")
    assert loaded.vocab_size == tokenizer.vocab_size and _vocab(loaded) == EXPECTED
    for t in TEXTS + ["Unknown CAT!"]:
        np.testing.assert_array_equal(loaded.encode(t, 4), tokenizer.encode(t, 4))


def test_load_rejects_other_files(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not a vmjax text tokenizer"):
        text.Tokenizer.load(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError):
        text.Tokenizer.load(tmp_path / "missing.json")


def test_bad_arguments():
    with pytest.raises(ValueError, match="vocab_size must be >= 2"):
        text.build_vocabulary(TEXTS, vocab_size=1)
    with pytest.raises(ValueError, match="min_frequency"):
        text.build_vocabulary(TEXTS, vocab_size=10, min_frequency=0)
    with pytest.raises(TypeError, match="not one string"):
        text.build_vocabulary("the cat", vocab_size=10)
    with pytest.raises(TypeError, match=r"texts\[1\] is a bytes"):
        text.build_vocabulary(["ok", b"no"], vocab_size=10)
    only_specials = text.build_vocabulary(TEXTS, vocab_size=2)
    np.testing.assert_array_equal(only_specials.encode("the cat", None), [1, 1])


def test_cli_help_and_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        text.main(["--help"])
    assert e.value.code == 0 and "--vocab_size" in capsys.readouterr().out
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(SystemExit) as e:
        text.main(["--texts", str(tmp_path / "latin1.txt"), "--out", "x", "--vocab_size", "9"])
    assert e.value.code == 1 and "latin1.txt is not UTF-8" in capsys.readouterr().err


def test_caption_ids_round_trip_through_a_record():
    tokenizer = text.build_vocabulary(TEXTS, vocab_size=100)
    ids = tokenizer.encode("The cat and the DOG!", 32)
    np.testing.assert_array_equal(ids, [4, 2, 1, 4, 3, 5])
    frames = np.zeros((3, yt8m.RGB_DIM), np.uint8), np.zeros((3, yt8m.AUDIO_DIM), np.uint8)
    data = yt8m.encode_frame_example("v", [2], *frames, text_tokens=ids)
    np.testing.assert_array_equal(yt8m.decode_frame_example(data)["text_tokens"], ids)
    data = yt8m.encode_video_example(
        "v", [2], np.zeros(yt8m.RGB_DIM), np.zeros(yt8m.AUDIO_DIM), text_tokens=ids
    )
    np.testing.assert_array_equal(yt8m.decode_video_example(data)["text_tokens"], ids)
