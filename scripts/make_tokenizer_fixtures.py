#!/usr/bin/env python3
"""Writes the tokenizer fixtures of tests/tokenizer_test.cc (run by hand; the output is committed).

Trains small tokenizers with the reference implementations on a built-in multilingual text and
records, for every test string, the ids the reference produces and its decodings:

  llama3/     byte-level BPE tokenizer.json, Llama 3 split regex, <|begin_of_text|> etc.
  qwen2/      byte-level BPE tokenizer.json, Qwen2 split regex and NFC normalizer, ChatML tokens
  sp_bpe/     SentencePiece BPE tokenizer.model with byte fallback (Llama 2 / Mistral style)
  metaspace/  the same model converted to tokenizer.json the way Hugging Face converts Llama 2
              (Prepend/Replace normalizer, BPE with byte_fallback, ByteFallback/Fuse decoder)

Each directory gets cases.json: [{"text", "ids", "ids_bos", "decoded", "decoded_skip"}] for ~40
chosen strings, a few with special tokens embedded, and 150 seeded random strings.

Needs: pip install tokenizers sentencepiece protobuf
Usage: python3 scripts/make_tokenizer_fixtures.py [OUT_DIR]   (default tests/fixtures/tokenizers)
"""
import json
import os
import sys
import tempfile

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as sp_pb2
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                 r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

CORPUS = """\
The quick brown fox jumps over the lazy dog. It's a test: we're sure they'll see what I'd do.
Large language models keep a key-value cache for every token of the conversation history.
A returning conversation prefills only its new tokens when the cache is stored instead of recomputed.
def encode(text):\n    return [ord(c) for c in text]  # a comment\n\tindented with a tab
Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 1234 56789 3.14159 2024-06-01 12:30:45 $19.99 50%
Le cœur a ses raisons que la raison ne connaît point. Ça va très bien, merci beaucoup !
Der schnelle braune Fuchs springt über den faulen Hund. Straße, Größe, Übung, schön.
El niño comió piña y jalapeños en la mañana. ¿Dónde está la biblioteca? ¡Olé!
Быстрая коричневая лиса прыгает через ленивую собаку. Привет, мир! Как дела?
Η γρήγορη καφέ αλεπού πηδάει πάνω από το τεμπέλικο σκυλί. Καλημέρα κόσμε.
敏捷的棕色狐狸跳过了懒狗。我们今天去北京大学学习人工智能和机器学习。你好，世界！
以存代算：用存储代替重复计算。多轮对话的历史缓存可以复用。
素早い茶色の狐が怠け者の犬を飛び越える。こんにちは世界。東京は日本の首都です。
빠른 갈색 여우가 게으른 개를 뛰어넘습니다. 안녕하세요 세계. 한국어 문장입니다.
الثعلب البني السريع يقفز فوق الكلب الكسول. مرحبا بالعالم. اللغة العربية جميلة.
השועל החום המהיר קופץ מעל הכלב העצלן. שלום עולם.
तेज़ भूरी लोमड़ी आलसी कुत्ते के ऊपर कूदती है। नमस्ते दुनिया।
สุนัขจิ้งจอกสีน้ำตาลกระโดดข้ามสุนัขขี้เกียจ สวัสดีชาวโลก
Emoji time 😀 🎉 👍 ❤️ 🚀 — and some symbols: © ® ™ € £ ¥ • … « » “quotes” ‘single’.
    Whitespace   runs   and\n\nnewlines\r\nwindows line endings\ttabs\t\tand more.
"""

TEST_STRINGS = [
    "",
    "Hello world",
    "Hello, world! How are you today?",
    "The quick brown fox jumps over the lazy dog.",
    " leading space",
    "trailing space ",
    "   three leading spaces",
    "multiple     spaces   between   words",
    "tabs\tand\t\ttabs",
    "line one\nline two\n\nline four\n",
    "windows\r\nline\r\nendings",
    "\n\n\n",
    "   ",
    "It's they're we've I'm you'll he'd IT'S",
    "Numbers 1 12 123 1234 12345 3.14159 -42 1e10",
    "2024-06-01T12:30:45Z",
    "def f(x):\n    return x * 2  # double\n",
    "Ça va très bien, merci beaucoup ! Où est la gare ?",
    "Straße Größe Übung naïve café résumé",
    "e\u0301 vs \u00e9 and a\u0308 (combining marks)",
    "Привет, мир! Как дела?",
    "Καλημέρα κόσμε",
    "你好，世界！我们今天学习人工智能。",
    "以存代算",
    "こんにちは世界。東京は日本の首都です。",
    "안녕하세요 세계",
    "مرحبا بالعالم",
    "שלום עולם",
    "नमस्ते दुनिया",
    "สวัสดีชาวโลก",
    "Emoji 😀🎉👍 ❤️ 🚀🦀 and a family 👨‍👩‍👧",
    "Rare chars: 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ꙮ ☃ ∮ ∑ ≠",
    "Mixed 中文 and English and عربي together",
    "symbols © ® ™ € £ ¥ • … « » “quotes”",
    "URL https://example.com/path?q=1&r=two#frag",
    "a",
    "!",
    "ü",
]



def random_strings(count, seed):
    """Random strings from a palette that stresses the pre-tokenizers, plus random code points
    from the BMP and the supplementary planes: assigned in Unicode 14 (this Python's and
    Debian bookworm's PCRE2 10.42 tables; newer letters would be \\p{L} for the reference only),
    no surrogates, no U+2581."""
    import random
    import unicodedata
    rng = random.Random(seed)
    palette = ["a", "b", "the", "Hello", "world", "'s", "'LL", " ", "  ", "\t", "\n", "\r\n", "0", "7",
               "12345", ".", ",", "!?", "<", "|", ">", "é", "e\u0301", "ß", "Ω", "ж", "中", "文", "の", "한",
               "ب", "ש", "😀", "👍🏽", "\u200d", "ﬁ", "Å", "A\u030a", "\u00a0", "\u3000", "\u2028"]
    out = []
    for _ in range(count):
        parts = []
        for _ in range(rng.randint(1, 16)):
            if rng.random() < 0.8:
                parts.append(rng.choice(palette))
                continue
            while True:
                cp = rng.choice([rng.randint(0x20, 0x2FF), rng.randint(0x300, 0xFFFF), rng.randint(0x10000, 0x1FFFF)])
                if unicodedata.category(chr(cp)) not in ("Cn", "Cs") and cp != 0x2581:
                    break
            parts.append(chr(cp))
        out.append("".join(parts))
    return out


RANDOM_STRINGS = random_strings(150, seed=7)

# Strings with special tokens embedded, per family.
SPECIAL_STRINGS = {
    "llama3": [
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>",
        "text before <|eot_id|> text after",
        "<|eot_id|><|eot_id|>",
        "not special: <|eot_id |> <|begin_of_text",
    ],
    "qwen2": [
        "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n",
        "end<|endoftext|>",
        "<|im_start|><|im_end|>",
        "not special: <|im_start |> <|im_end",
    ],
    "sp": [
        "<s>Hello</s>",
        "Hello <s> world </s>",
        "<s> leading space after bos",
        "not special: <s > </ s>",
    ],
}


def byte_level_tokenizer(pattern, specials, vocab_size, nfc):
    tok = Tokenizer(models.BPE(ignore_merges=True))
    if nfc:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=1, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(CORPUS.splitlines(keepends=True) * 3, trainer=trainer)
    return tok


def hf_cases(tok, strings):
    cases = []
    for s in strings:
        ids = tok.encode(s, add_special_tokens=False).ids
        ids_bos = tok.encode(s, add_special_tokens=True).ids
        cases.append({"text": s, "ids": ids, "ids_bos": ids_bos,
                      "decoded": tok.decode(ids, skip_special_tokens=False),
                      "decoded_skip": tok.decode(ids, skip_special_tokens=True)})
    return cases


def write_json(path, obj, compact=False):
    with open(path, "w", encoding="utf-8") as f:
        if compact:
            json.dump(obj, f, ensure_ascii=False, separators=(",", ":"))
        else:
            json.dump(obj, f, ensure_ascii=False, indent=1)
        f.write("\n")


def make_llama3(out):
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                "<|eot_id|>"]
    tok = byte_level_tokenizer(LLAMA3_PATTERN, specials, 1200, nfc=False)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", bos)])
    os.makedirs(out, exist_ok=True)
    tok.save(os.path.join(out, "tokenizer.json"))
    write_json(os.path.join(out, "tokenizer_config.json"),
               {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
                "tokenizer_class": "PreTrainedTokenizerFast"})
    write_json(os.path.join(out, "cases.json"), hf_cases(tok, TEST_STRINGS + SPECIAL_STRINGS["llama3"] + RANDOM_STRINGS))


def make_qwen2(out):
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = byte_level_tokenizer(QWEN2_PATTERN, specials, 1000, nfc=True)
    os.makedirs(out, exist_ok=True)
    tok.save(os.path.join(out, "tokenizer.json"))
    write_json(os.path.join(out, "tokenizer_config.json"),
               {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                "tokenizer_class": "Qwen2Tokenizer"})
    write_json(os.path.join(out, "cases.json"), hf_cases(tok, TEST_STRINGS + SPECIAL_STRINGS["qwen2"] + RANDOM_STRINGS))


def train_sentencepiece(prefix):
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as f:
        f.write(CORPUS * 3)
        corpus_path = f.name
    spm.SentencePieceTrainer.train(
        input=corpus_path, model_prefix=prefix, model_type="bpe", vocab_size=900,
        character_coverage=1.0, byte_fallback=True, split_digits=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=True,
        allow_whitespace_only_pieces=True, hard_vocab_limit=False,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    os.unlink(corpus_path)


def sp_cases(model_bytes, strings):
    """Reference ids with the Hugging Face fast-tokenizer convention for special tokens: control
    pieces in the text are matched verbatim; the dummy prefix goes only before text at offset 0."""
    with_prefix = spm.SentencePieceProcessor(model_proto=model_bytes)
    proto = sp_pb2.ModelProto()
    proto.ParseFromString(model_bytes)
    proto.normalizer_spec.add_dummy_prefix = False
    without_prefix = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
    specials = ["<s>", "</s>", "<unk>"]

    def segments(s):
        out, start, i = [], 0, 0
        while i < len(s):
            hit = next((t for t in specials if s.startswith(t, i)), None)
            if hit:
                if i > start:
                    out.append((False, s[start:i], start))
                out.append((True, hit, i))
                i += len(hit)
                start = i
            else:
                i += 1
        if start < len(s):
            out.append((False, s[start:], start))
        return out

    cases = []
    for s in strings:
        ids, decoded, decoded_skip = [], "", ""
        for special, seg, offset in segments(s):
            if special:
                ids.append(with_prefix.piece_to_id(seg))
                decoded += seg
                continue
            seg_ids = (with_prefix if offset == 0 else without_prefix).encode(seg)
            ids += seg_ids
            decoded += (with_prefix if decoded == "" else without_prefix).decode(seg_ids)
            decoded_skip += (with_prefix if decoded_skip == "" else without_prefix).decode(seg_ids)
        cases.append({"text": s, "ids": ids, "ids_bos": [with_prefix.bos_id()] + ids,
                      "decoded": decoded, "decoded_skip": decoded_skip})
    return cases


def make_sentencepiece(out, metaspace_out):
    os.makedirs(out, exist_ok=True)
    prefix = os.path.join(out, "sp")
    train_sentencepiece(prefix)
    os.replace(prefix + ".model", os.path.join(out, "tokenizer.model"))
    os.unlink(prefix + ".vocab")
    with open(os.path.join(out, "tokenizer.model"), "rb") as f:
        model_bytes = f.read()
    write_json(os.path.join(out, "cases.json"), sp_cases(model_bytes, TEST_STRINGS + SPECIAL_STRINGS["sp"] + RANDOM_STRINGS))
    make_metaspace(model_bytes, metaspace_out)


def make_metaspace(model_bytes, out):
    """Converts the SentencePiece model the way transformers' LlamaConverter does (legacy form):
    vocab from the pieces, merges ordered by the score of the merged piece."""
    proto = sp_pb2.ModelProto()
    proto.ParseFromString(model_bytes)
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    merges = []
    for piece, piece_id in vocab.items():
        kind = proto.pieces[piece_id].type
        if kind != sp_pb2.ModelProto.SentencePiece.NORMAL:
            continue
        for split in range(1, len(piece)):
            left, right = piece[:split], piece[split:]
            if left in vocab and right in vocab:
                merges.append((left, right, piece_id))
    merges.sort(key=lambda m: (m[2], vocab[m[0]], vocab[m[1]]))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[(a, b) for a, b, _ in merges], unk_token="<unk>",
                               byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(content=" ", left=1, right=0)])
    from tokenizers import AddedToken
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in ["<unk>", "<s>", "</s>"]])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    os.makedirs(out, exist_ok=True)
    tok.save(os.path.join(out, "tokenizer.json"))
    write_json(os.path.join(out, "tokenizer_config.json"),
               {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                "tokenizer_class": "LlamaTokenizerFast"})
    write_json(os.path.join(out, "cases.json"), hf_cases(tok, TEST_STRINGS + SPECIAL_STRINGS["sp"] + RANDOM_STRINGS))


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "tokenizers")
    make_llama3(os.path.join(out, "llama3"))
    make_qwen2(os.path.join(out, "qwen2"))
    make_sentencepiece(os.path.join(out, "sp_bpe"), os.path.join(out, "metaspace"))
    for root, _, files in os.walk(out):
        for name in files:
            path = os.path.join(root, name)
            size = os.path.getsize(path)
            print(f"{os.path.relpath(path, out)}: {size} bytes")
            assert size < 200_000, path


if __name__ == "__main__":
    main()
