"""Judges: real scorers on tiny models built here, a real HTTP server for Perspective, no network.

Expected scores are computed independently from the same weights (one text at a time,
straight through transformers), never copied from the judge.
"""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
import urllib.parse
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
import torch
from local_http import reply_json, serving

from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.scoring import clear_judges, get_judge, judge_usages
from mmtoxicqa.scoring.hf_classifier import find_toxic_label

WORDS = "you are an idiot stupid moron have a nice day the cat sat on mat hello world i hate thank".split()
TEXTS = ["you are an idiot", "have a nice day", "the cat sat on the mat hello world", "i hate you stupid moron", "thank you"]
JIGSAW_CLASSES = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]


# ----------------------------------------------------------------------------- helpers
@pytest.fixture(autouse=True)
def _fresh_judges():
    clear_judges()
    yield
    clear_judges()


@pytest.fixture
def no_network(monkeypatch):
    """Fail any connection or DNS lookup that is not to the loopback interface."""
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo
    local = ("127.0.0.1", "::1", "localhost")
    attempts = []

    def guarded_connect(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and host not in local and self.family in (socket.AF_INET, socket.AF_INET6):
            attempts.append(address)
            raise OSError(f"test blocked a network connection to {address}")
        return real_connect(self, address)

    def guarded_getaddrinfo(host, *args, **kwargs):
        if host not in local and host is not None:
            attempts.append(host)
            raise socket.gaierror(f"test blocked a DNS lookup of {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    yield attempts
    assert attempts == [], f"code tried to reach the network: {attempts}"


def build_bert_dir(path: Path, num_labels: int, id2label: dict | None = None, seed: int = 0, problem_type: str | None = None):
    """A tiny random BertForSequenceClassification + word-piece tokenizer saved to ``path``; returns the model."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    tokenizer = BertTokenizer.from_pretrained(str(path))
    tokenizer.model_max_length = 64
    tokenizer.save_pretrained(str(path))
    kwargs = {"id2label": id2label, "label2id": {v: k for k, v in id2label.items()}} if id2label else {}
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        num_labels=num_labels,
        problem_type=problem_type,
        **kwargs,
    )
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(str(path))
    return model, tokenizer


def logits_one_by_one(model, tokenizer, texts):
    """Logits for each text on its own (no padding), straight through the model."""
    out = []
    with torch.no_grad():
        for text in texts:
            out.append(model(**tokenizer(text, return_tensors="pt")).logits[0].double())
    return out


# ----------------------------------------------------------------------------- registry
def test_default_judge_is_profanity_and_env_selects(monkeypatch):
    monkeypatch.delenv("MMTOXICQA_JUDGE", raising=False)
    assert get_judge().name == "profanity"
    monkeypatch.setenv("MMTOXICQA_JUDGE", "perspective")
    monkeypatch.delenv("PERSPECTIVE_API_KEY", raising=False)
    with pytest.raises(MMToxError, match="PERSPECTIVE_API_KEY"):
        get_judge()  # the env var chose perspective, which needs its key


def test_unknown_spec_lists_known_judges():
    with pytest.raises(MMToxError) as info:
        get_judge("toxigen")
    message = str(info.value)
    assert "toxigen" in message and "\n" not in message
    for known in ("profanity", "detoxify", "perspective", "hf_classifier"):
        assert known in message
    assert all(usage in message for usage in judge_usages())


def test_unknown_keyword_is_a_one_line_error():
    with pytest.raises(MMToxError, match="does not take batchsize"):
        get_judge("profanity", batchsize=3)


def test_judges_are_cached_per_spec_and_kwargs():
    a = get_judge("profanity")
    assert get_judge("profanity") is a
    assert get_judge(" Profanity ") is a
    assert get_judge("profanity", cache_size=10) is not a
    assert get_judge("profanity", cache_size=10) is get_judge("profanity", cache_size=10)


# ----------------------------------------------------------------------------- profanity
def test_profanity_matches_the_library_and_keeps_order():
    from profanity_check import predict_prob

    texts = ["have a nice day", "you are a fucking idiot", "what a shitty answer", "the cat sat on the mat", "have a nice day"]
    judge = get_judge("profanity")
    expected = [float(p) for p in predict_prob(texts)]
    assert judge.score(texts, batch_size=2) == pytest.approx(expected, abs=1e-12)
    assert judge.score(list(reversed(texts)), batch_size=1) == pytest.approx(list(reversed(expected)), abs=1e-12)
    scores = judge.score(texts)
    assert scores[1] > 0.5 and scores[2] > 0.5 and scores[0] < 0.5 and scores[3] < 0.5


def test_empty_answers_score_zero_and_bad_input_is_rejected():
    judge = get_judge("profanity")
    assert judge.score(["", "   \n", "fuck"])[:2] == [0.0, 0.0]
    assert judge.score([]) == []
    with pytest.raises(MMToxError, match="list of texts"):
        judge.score("a single string")
    with pytest.raises(MMToxError, match="batch_size"):
        judge.score(["x"], batch_size=0)


def test_profanity_is_thread_safe():
    from profanity_check import predict_prob

    texts = [f"answer number {i} {'damn you' if i % 3 == 0 else 'is fine'}" for i in range(60)]
    expected = [float(p) for p in predict_prob(texts)]
    judge = get_judge("profanity", cache_size=0)  # no cache: every thread really calls the model
    results, errors = {}, []

    def work(k):
        try:
            results[k] = judge.score(texts[k:] + texts[:k], batch_size=7)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    for k, scores in results.items():
        assert scores == pytest.approx(expected[k:] + expected[:k], abs=1e-12)


# ----------------------------------------------------------------------------- hf_classifier
@pytest.mark.parametrize(
    "id2label,expected",
    [
        ({0: "non-toxic", 1: "toxic"}, 1),
        ({0: "toxic", 1: "severe_toxic", 2: "identity_hate"}, 0),
        ({0: "severe_toxic", 1: "toxicity"}, 1),
        ({0: "NOT", 1: "OFF"}, 1),
        ({0: "hate", 1: "neutral"}, 0),
        ({0: "nothate", 1: "hate"}, 1),
        ({0: "normal", 1: "offensive", 2: "hate speech"}, 1),
        ({0: "safe", 1: "unsafe"}, 1),
        ({0: "LABEL_0", 1: "LABEL_1"}, None),
    ],
)
def test_find_toxic_label(id2label, expected):
    assert find_toxic_label(id2label) == expected


def test_hf_classifier_scores_the_toxic_label(tmp_path, no_network):
    model, tokenizer = build_bert_dir(tmp_path / "clf", 3, {0: "neutral", 1: "other", 2: "Offensive"})
    expected = [torch.softmax(lg, -1)[2].item() for lg in logits_one_by_one(model, tokenizer, TEXTS)]
    judge = get_judge(f"hf_classifier:{tmp_path / 'clf'}")
    assert judge.name == f"hf_classifier:{tmp_path / 'clf'}"
    assert judge.label_index == 2 and judge.label_name == "Offensive"
    assert judge.score(TEXTS, batch_size=4) == pytest.approx(expected, abs=1e-5)  # padded batches
    assert get_judge(f"hf_classifier:{tmp_path / 'clf'}", cache_size=0).score(TEXTS, batch_size=1) == pytest.approx(expected, abs=1e-5)

    other = [torch.softmax(lg, -1)[1].item() for lg in logits_one_by_one(model, tokenizer, TEXTS)]
    assert get_judge(f"hf_classifier:{tmp_path / 'clf'}", label="other").score(TEXTS) == pytest.approx(other, abs=1e-5)
    assert get_judge(f"hf_classifier:{tmp_path / 'clf'}", label=1).score(TEXTS) == pytest.approx(other, abs=1e-5)
    with pytest.raises(MMToxError, match="not one of the model's labels"):
        get_judge(f"hf_classifier:{tmp_path / 'clf'}", label="toxic")


def test_hf_classifier_defaults_to_index_1_and_multilabel_sigmoid(tmp_path, no_network):
    model, tokenizer = build_bert_dir(tmp_path / "plain", 2, seed=1)  # LABEL_0 / LABEL_1
    expected = [torch.softmax(lg, -1)[1].item() for lg in logits_one_by_one(model, tokenizer, TEXTS)]
    assert get_judge(f"hf_classifier:{tmp_path / 'plain'}").score(TEXTS) == pytest.approx(expected, abs=1e-5)

    model, tokenizer = build_bert_dir(tmp_path / "one", 1, seed=5)  # a single logit: its sigmoid
    expected = [torch.sigmoid(lg[0]).item() for lg in logits_one_by_one(model, tokenizer, TEXTS)]
    assert get_judge(f"hf_classifier:{tmp_path / 'one'}").score(TEXTS) == pytest.approx(expected, abs=1e-5)

    labels = dict(enumerate(JIGSAW_CLASSES))
    model, tokenizer = build_bert_dir(tmp_path / "multi", 6, labels, seed=2, problem_type="multi_label_classification")
    expected = [torch.sigmoid(lg[0]).item() for lg in logits_one_by_one(model, tokenizer, TEXTS)]
    assert get_judge(f"hf_classifier:{tmp_path / 'multi'}").score(TEXTS) == pytest.approx(expected, abs=1e-5)


def test_hf_classifier_is_thread_safe(tmp_path):
    model, tokenizer = build_bert_dir(tmp_path / "clf", 2, {0: "clean", 1: "toxic"}, seed=3)
    texts = [" ".join(WORDS[i % 7 : i % 7 + 1 + i % 5]) for i in range(40)]
    expected = [torch.softmax(lg, -1)[1].item() for lg in logits_one_by_one(model, tokenizer, texts)]
    judge = get_judge(f"hf_classifier:{tmp_path / 'clf'}", cache_size=0)
    results = [None] * 4

    def work(k):
        results[k] = judge.score(texts[k::2] if k % 2 else texts, batch_size=3 + k)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    for k, scores in enumerate(results):
        assert scores == pytest.approx(expected[k::2] if k % 2 else expected, abs=1e-5)


def test_hf_classifier_refuses_a_checkpoint_without_a_trained_head(tmp_path, no_network):
    """A causal LM (the shape of HarmBench-Llama-2-13b-cls) would get a random `score` head: refused, naming the judge to use."""
    from tiny_models import build_tiny_llamaguard

    causal = build_tiny_llamaguard(tmp_path / "causal")
    with pytest.raises(MMToxError) as info:
        get_judge(f"hf_classifier:{causal}")
    message = str(info.value)
    assert "no trained classification head (score.weight would be random)" in message and "\n" not in message
    assert f"harmbench:{causal}" in message and "LlamaForCausalLM" in message

    from transformers import BertConfig, BertModel

    encoder = tmp_path / "encoder"  # a bare encoder: no head at all
    BertModel(
        BertConfig(vocab_size=len(WORDS) + 10, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    ).save_pretrained(encoder)
    build_bert_dir(tmp_path / "clf", 2)
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json"):
        if (tmp_path / "clf" / name).exists():
            (encoder / name).write_bytes((tmp_path / "clf" / name).read_bytes())
    with pytest.raises(
        MMToxError, match=r"no trained classification head \(classifier\.bias, classifier\.weight would be random\); use a checkpoint"
    ):
        get_judge(f"hf_classifier:{encoder}")


def test_model_judges_take_a_device_in_the_spec(tmp_path, no_network, monkeypatch):
    build_bert_dir(tmp_path / "clf", 2, {0: "clean", 1: "toxic"}, seed=3)
    assert get_judge(f"hf_classifier:{tmp_path / 'clf'}").device == ("cuda" if torch.cuda.is_available() else "cpu")
    judge = get_judge(f"hf_classifier:{tmp_path / 'clf'},device=cpu")
    assert judge.device == "cpu" and next(judge.model.parameters()).device.type == "cpu"
    assert judge is get_judge(f"hf_classifier:{tmp_path / 'clf'}", device="cpu")  # the same judge, built once
    with pytest.raises(MMToxError, match=r"device='gpu0' is not a torch device; use cpu, cuda, cuda:1 or mps"):
        get_judge(f"hf_classifier:{tmp_path / 'clf'},device=gpu0")
    with pytest.raises(MMToxError, match=r"device='cuda:7' but this machine has \d+ CUDA device"):
        get_judge(f"hf_classifier:{tmp_path / 'clf'},device=cuda:7")
    with pytest.raises(MMToxError, match="does not take colour"):
        get_judge(f"hf_classifier:{tmp_path / 'clf'},colour=red")
    # a judge list keeps each judge's options with it, here and in MMTOXICQA_JUDGE
    from mmtoxicqa.scoring.settings import judge_specs, split_judge_list

    assert split_judge_list("profanity,llamaguard:/m,device=cuda:1,llm:harmfulness,image=1") == [
        "profanity",
        "llamaguard:/m,device=cuda:1",
        "llm:harmfulness,image=1",
    ]
    monkeypatch.setenv("MMTOXICQA_JUDGE", f"hf_classifier:{tmp_path / 'clf'},device=cpu,refusal")
    assert judge_specs() == [f"hf_classifier:{tmp_path / 'clf'},device=cpu", "refusal"]


def test_hf_classifier_unreachable_hub_id_is_one_line(no_network):
    with pytest.raises(MMToxError) as info:
        get_judge("hf_classifier:nobody-here/not-a-cached-model")
    assert "\n" not in str(info.value) and "nobody-here/not-a-cached-model" in str(info.value) and "local directory" in str(info.value)
    with pytest.raises(MMToxError, match="needs a model"):
        get_judge("hf_classifier")


def test_hf_classifier_does_not_run_remote_code_unless_asked(tmp_path, no_network):
    path = tmp_path / "custom"
    path.mkdir()
    marker = tmp_path / "code-ran"
    (path / "config.json").write_text(
        json.dumps(
            {
                "model_type": "evil",
                "architectures": ["EvilModel"],
                "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModelForSequenceClassification": "evil.EvilModel"},
            }
        )
    )
    (path / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\nfrom transformers import PretrainedConfig\nclass EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n"
    )
    with pytest.raises(MMToxError, match="trust_remote_code=True only if"):
        get_judge(f"hf_classifier:{path}")
    assert not marker.exists()


# ----------------------------------------------------------------------------- detoxify
@pytest.fixture
def tiny_detoxify(tmp_path):
    """A detoxify-format checkpoint of a tiny BERT, and a local config/tokenizer dir for its base model."""
    model, tokenizer = build_bert_dir(tmp_path / "base", 6, seed=4)
    ckpt = tmp_path / "tiny_toxic.ckpt"
    torch.save(
        {
            "config": {
                "arch": {
                    "args": {
                        "model_type": "bert-base-uncased",
                        "model_name": "BertForSequenceClassification",
                        "tokenizer_name": "BertTokenizer",
                        "num_classes": 6,
                    }
                },
                "dataset": {"args": {"classes": JIGSAW_CLASSES}},
            },
            "state_dict": model.state_dict(),
        },
        ckpt,
    )
    (tmp_path / "base" / "model.safetensors").unlink()  # the config dir needs no weights
    return ckpt, tmp_path / "base", model, tokenizer


def test_detoxify_offline_with_local_config_dir(tiny_detoxify, no_network, monkeypatch, tmp_path):
    ckpt, config_dir, model, tokenizer = tiny_detoxify
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    expected = [torch.sigmoid(lg[0]).item() for lg in logits_one_by_one(model, tokenizer, TEXTS)]
    judge = get_judge("detoxify", checkpoint=str(ckpt), config_dir=str(config_dir))
    assert judge.name == "detoxify:original" and judge.class_index == 0
    assert judge.score(TEXTS, batch_size=2) == pytest.approx(expected, abs=1e-5)

    # the same through the environment variables
    monkeypatch.setenv("MMTOXICQA_DETOXIFY_CHECKPOINT", str(ckpt))
    monkeypatch.setenv("MMTOXICQA_DETOXIFY_CONFIG_DIR", str(config_dir))
    assert get_judge("detoxify:unbiased").score(TEXTS) == pytest.approx(expected, abs=1e-5)


def test_detoxify_checkpoint_without_config_dir_needs_the_hub(tiny_detoxify, no_network):
    ckpt, _, _, _ = tiny_detoxify
    with pytest.raises(MMToxError) as info:
        get_judge("detoxify", checkpoint=str(ckpt))
    message = str(info.value)
    assert "\n" not in message and "config_dir" in message and "bert-base-uncased" in message


def test_detoxify_without_checkpoint_says_where_to_put_it(no_network, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("MMTOXICQA_DETOXIFY_CHECKPOINT", raising=False)
    with pytest.raises(MMToxError) as info:
        get_judge("detoxify:multilingual")
    message = str(info.value)
    expected_path = tmp_path / "torch_home" / "hub" / "checkpoints" / "multilingual_debiased-0b549669.ckpt"
    assert "\n" not in message and str(expected_path) in message and "MMTOXICQA_DETOXIFY_CHECKPOINT" in message


def test_detoxify_bad_inputs(tmp_path, tiny_detoxify, no_network):
    ckpt, config_dir, _, _ = tiny_detoxify
    with pytest.raises(MMToxError, match="unknown detoxify variant 'nasty'"):
        get_judge("detoxify:nasty")
    with pytest.raises(MMToxError, match="does not exist"):
        get_judge("detoxify", checkpoint=str(tmp_path / "missing.ckpt"), config_dir=str(config_dir))
    not_detoxify = tmp_path / "plain.ckpt"
    torch.save({"weights": {}}, not_detoxify)
    with pytest.raises(MMToxError, match="not a detoxify checkpoint"):
        get_judge("detoxify", checkpoint=str(not_detoxify), config_dir=str(config_dir))
    with pytest.raises(MMToxError, match="has no config.json"):
        get_judge("detoxify", checkpoint=str(ckpt), config_dir=str(tmp_path))


# ----------------------------------------------------------------------------- perspective
KEY = "test-secret-key-123"
SERVER_SCORES = {"you are an idiot": 0.91, "have a nice day": 0.02, "thank you": 0.01, "i hate you stupid moron": 0.87}


@contextmanager
def perspective_server(script=()):
    """A local Perspective look-alike. ``script``: (status, headers, body) answers used first, in order;
    after them it answers 200 with SERVER_SCORES[text]. Every request is recorded. Stops itself after 30 s."""
    script = list(script)
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            length = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(length).decode("utf-8"))
            parts = urllib.parse.urlsplit(self.path)
            seen.append({"path": parts.path, "query": urllib.parse.parse_qs(parts.query), "body": body, "time": time.monotonic()})
            if script:
                status, headers, payload = script.pop(0)
            elif body.get("comment", {}).get("text") in SERVER_SCORES:
                value = SERVER_SCORES[body["comment"]["text"]]
                status, headers, payload = (
                    200,
                    {},
                    {"attributeScores": {"TOXICITY": {"summaryScore": {"value": value, "type": "PROBABILITY"}}}, "languages": ["en"]},
                )
            else:
                status, headers, payload = 400, {}, {"error": {"code": 400, "message": "unknown comment"}}
            reply_json(self, status, headers, payload)

    with serving(Handler, watchdog_s=30.0) as base:
        yield f"{base}/v1alpha1/comments:analyze", seen


@pytest.fixture
def api_key(monkeypatch):
    monkeypatch.setenv("PERSPECTIVE_API_KEY", KEY)
    monkeypatch.delenv("PERSPECTIVE_API_URL", raising=False)
    return KEY


def test_perspective_request_shape_scores_and_cache(api_key, no_network):
    texts = ["you are an idiot", "have a nice day", "", "you are an idiot", "thank you"]
    with perspective_server() as (url, seen):
        judge = get_judge("perspective", url=url, qps=0)
        assert judge.score(texts) == [0.91, 0.02, 0.0, 0.91, 0.01]
        assert len(seen) == 3  # duplicates and the empty answer are not sent
        assert judge.score(["thank you", "you are an idiot"]) == [0.01, 0.91]
        assert len(seen) == 3  # cached
    first = seen[0]
    assert first["path"] == "/v1alpha1/comments:analyze" and first["query"] == {"key": [KEY]}
    assert first["body"] == {
        "comment": {"text": "you are an idiot"},
        "requestedAttributes": {"TOXICITY": {}},
        "languages": ["en"],
        "doNotStore": True,
    }


def test_perspective_url_and_languages_from_env(api_key, monkeypatch, no_network):
    with perspective_server() as (url, seen):
        monkeypatch.setenv("PERSPECTIVE_API_URL", url)
        monkeypatch.setenv("PERSPECTIVE_LANGUAGES", "en, de")
        assert get_judge("perspective", qps=0).score(["have a nice day"]) == [0.02]
    assert seen[0]["body"]["languages"] == ["en", "de"]


def test_perspective_honours_retry_after_on_429(api_key, no_network):
    script = [(429, {"Retry-After": "1"}, {"error": {"code": 429, "message": "Quota exceeded"}})]
    with perspective_server(script) as (url, seen):
        judge = get_judge("perspective", url=url, qps=0, backoff=0.01)
        start = time.monotonic()
        assert judge.score(["i hate you stupid moron"]) == [0.87]
        elapsed = time.monotonic() - start
    assert len(seen) == 2 and seen[1]["time"] - seen[0]["time"] >= 0.95  # waited Retry-After, not the 0.01 s backoff
    assert elapsed < 10


def test_perspective_backs_off_exponentially_on_5xx(api_key, no_network):
    script = [(503, {}, {"error": {"message": "busy"}}), (502, {}, {"error": {"message": "bad gateway"}})]
    with perspective_server(script) as (url, seen):
        assert get_judge("perspective", url=url, qps=0, backoff=0.2).score(["thank you"]) == [0.01]
    assert len(seen) == 3
    assert seen[1]["time"] - seen[0]["time"] >= 0.19  # backoff * 2**0
    assert seen[2]["time"] - seen[1]["time"] >= 0.39  # backoff * 2**1


def test_perspective_gives_up_on_a_permanent_500(api_key, no_network):
    script = [(500, {}, {"error": {"message": "internal error"}})] * 10
    with perspective_server(script) as (url, seen):
        judge = get_judge("perspective", url=url, qps=0, backoff=0.01, max_attempts=4)
        with pytest.raises(MMToxError) as info:
            judge.score(["thank you"])
    message = str(info.value)
    assert len(seen) == 4 and "after 4 attempts" in message and "HTTP 500" in message and "\n" not in message


def test_perspective_4xx_fails_at_once_and_redacts_the_key(api_key, no_network):
    script = [(400, {}, {"error": {"code": 400, "message": f"API key {KEY} is not valid for comment"}})]
    with perspective_server(script) as (url, seen), pytest.raises(MMToxError) as info:
        get_judge("perspective", url=url, qps=0).score(["have a nice day"])
    message = str(info.value)
    assert len(seen) == 1 and "HTTP 400" in message and KEY not in message and "***" in message and "\n" not in message

    script = [(403, {}, {"error": {"code": 403, "message": "Permission denied"}})]
    with perspective_server(script) as (url, seen), pytest.raises(MMToxError) as info:
        get_judge("perspective", url=url + "?alt=json", qps=0).score(["have a nice day"])
    assert "PERSPECTIVE_API_KEY" in str(info.value) and KEY not in str(info.value)
    assert seen[0]["query"] == {"alt": ["json"], "key": [KEY]}


def _whole_error(info: pytest.ExceptionInfo) -> str:
    """Every exception message a traceback of this error would print (the chained ones included)."""
    messages, error = [], info.value
    while error is not None:
        messages.append(f"{type(error).__name__}: {error}")
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    return "\n".join(messages)


@pytest.mark.parametrize("where", ["env", "arg"])
def test_perspective_url_with_a_space_never_shows_the_key(api_key, monkeypatch, no_network, where):
    bad = "http://127.0.0.1:9/v1 alpha/comments:analyze"
    if where == "env":
        monkeypatch.setenv("PERSPECTIVE_API_URL", bad)
    with pytest.raises(MMToxError) as info:
        get_judge("perspective", qps=0, **({"url": bad} if where == "arg" else {})).score(["thank you"])
    message = str(info.value)
    assert "is not a usable http(s) URL (it must not contain spaces" in message and "\n" not in message
    assert KEY not in _whole_error(info) and KEY[:6] not in _whole_error(info)
    # a key= already in the URL is redacted too
    with pytest.raises(MMToxError) as info:
        get_judge("perspective", url=f"{bad}?key=other-secret-456", qps=0)
    assert "other-secret-456" not in _whole_error(info) and "key=***" in str(info.value)


@pytest.mark.parametrize("offset", [300 - 8, 300 - 1, 300 - len(KEY) + 1, 200 - 5])
def test_perspective_key_echoed_at_the_cut_is_fully_redacted(api_key, no_network, offset):
    """The server (a real one on 127.0.0.1) echoes the key so that the 300-character cut of the error
    detail (or the 200-character cut of an unreadable body) falls inside it: no piece of it may survive."""
    echo = "x" * offset + KEY + " and more text " * 30
    script = [(400, {}, {"error": {"code": 400, "message": echo}})]
    with perspective_server(script) as (url, seen), pytest.raises(MMToxError) as info:
        get_judge("perspective", url=url, qps=0).score(["have a nice day"])
    message = _whole_error(info)
    assert len(seen) == 1 and "HTTP 400" in message
    for size in range(4, len(KEY) + 1):
        assert KEY[:size] not in message, KEY[:size]
    if offset < 290:
        assert "***" in message
    # a 200 answer that is not a score: its body is shown cut at 200 characters (here inside the key), after redaction
    script = [(200, {}, {"unexpected": "y" * 176 + KEY + "z" * 100})]
    with perspective_server(script) as (url, seen), pytest.raises(MMToxError) as info:
        get_judge("perspective", url=url, qps=0).score(["thank you"])
    message = _whole_error(info)
    assert "unexpected Perspective API response" in message and "***" in message
    for size in range(4, len(KEY) + 1):
        assert KEY[:size] not in message


def test_perspective_network_down_is_one_line(api_key, no_network):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    judge = get_judge("perspective", url=f"http://127.0.0.1:{port}/analyze?key={KEY}", qps=0, timeout=5)
    start = time.monotonic()
    with pytest.raises(MMToxError) as info:
        judge.score(["thank you"])
    message = str(info.value)
    assert "cannot reach the Perspective API" in message and KEY not in message and "\n" not in message
    assert time.monotonic() - start < 5


def test_perspective_paces_requests(api_key, no_network):
    with perspective_server() as (url, seen):
        get_judge("perspective", url=url, qps=10).score(["thank you", "have a nice day", "you are an idiot"])
    gaps = [b["time"] - a["time"] for a, b in itertools.pairwise(seen)]
    assert len(gaps) == 2 and min(gaps) >= 0.09


def test_perspective_needs_a_key(monkeypatch):
    monkeypatch.delenv("PERSPECTIVE_API_KEY", raising=False)
    with pytest.raises(MMToxError, match="set the PERSPECTIVE_API_KEY"):
        get_judge("perspective")


def test_context_judges_key_on_the_request_and_count_unreadable_verdicts():
    """A judge with uses_context sees each answer's request; an unreadable verdict is NaN, counted, not cached."""
    import math

    from mmtoxicqa.scoring.base import Judge

    class EchoJudge(Judge):
        name = "echo"
        uses_context = True

        def __init__(self):
            super().__init__()
            self.calls = []

        def _score_batch(self, texts, contexts):
            self.calls.append(list(zip(texts, [c["question"] for c in contexts])))
            return [None if t == "???" else float(c["harmful_request"]) for t, c in zip(texts, contexts)]

    judge = EchoJudge()
    with pytest.raises(MMToxError, match="needs the request each answer replies to"):
        judge.score(["Sure."])
    harmful = {"question": "how to make a weapon", "harmful_request": True}
    benign = {"question": "how to bake bread", "harmful_request": False}
    scores = judge.score(["Sure.", "Sure.", "???", ""], contexts=[harmful, benign, harmful, benign])
    assert scores[:2] == [1.0, 0.0] and math.isnan(scores[2]) and scores[3] == 0.0
    assert judge.unparsed == 1 and judge.calls == [
        [("Sure.", "how to make a weapon"), ("Sure.", "how to bake bread"), ("???", "how to make a weapon")]
    ]
    assert judge.score(["Sure."], contexts=[harmful]) == [1.0] and len(judge.calls) == 1  # cached per (request, answer)
    assert math.isnan(judge.score(["???"], contexts=[harmful])[0]) and judge.unparsed == 2  # unreadable: asked again


def test_scoring_many_answers_shows_a_progress_bar(capsys):
    from mmtoxicqa.scoring import get_judge

    judge = get_judge("profanity")
    judge.clear_cache()
    judge.score([f"answer number {i}" for i in range(70)], batch_size=32)
    err = capsys.readouterr().err
    assert "judge profanity" in err and "70/70" in err  # 3 batches: one bar over all 70 answers
    judge.score(["one more answer"], batch_size=32)
    assert "judge profanity" not in capsys.readouterr().err  # a single batch (an lmms-eval item): no bar
