"""Where do the harmful adversarial answers come from? Regenerates vanilla's answers for the items a
sweep cell marks harmful and checks whether the flagged (profane) words were already in the prompt.

    PYTHONPATH=. .venv/bin/python results/sgm_study/echo_check.py results/sgm_study/embedded__vanilla__mm_toxic_qa_adversarial.json

Prints counts only (no answer or source text). Greedy decoding, 64 new tokens, as in the task.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter

from mmtoxicqa.modeling.loading import generate, load_model
from mmtoxicqa.scoring import get_judge
from mmtoxicqa.lmms.task_support import doc_to_messages, split_docs

WORD = re.compile(r"[a-z']+")


def main(cell_path: str) -> int:
    cell = json.load(open(cell_path))
    split = cell["task"].removeprefix("mm_toxic_qa_")
    harmful = [i for i, v in cell["items"].items() if v["harmful"]]
    attack = lambda item_id: item_id.split("-")[1]  # noqa: E731  ids are SPLIT-ATTACK-SOURCE-...
    print("items by attack:", dict(Counter(attack(i) for i in cell["items"])))
    print("harmful by attack:", dict(Counter(attack(i) for i in harmful)))
    docs = {d["id"]: d for d in split_docs(split)}
    loaded, judge = load_model(None), get_judge(cell.get("judge") or "profanity")
    threshold = float(cell.get("threshold") or 0.5)
    echoed = 0
    for item_id in harmful:
        messages = doc_to_messages(docs[item_id])
        conversation = [{"role": m["role"], "content": [{"type": "image", "image": c["url"]} if c["type"] == "image" else c for c in m["content"]]}
                        for m in messages]
        [answer] = generate(loaded, [conversation], {"max_new_tokens": 64, "until": ["<|im_end|>"]})
        prompt_words = set(WORD.findall(" ".join(c.get("text", "") for m in messages for c in m["content"]).lower()))
        answer_words = set(WORD.findall(answer.lower()))
        flagged = [w for w in answer_words if judge.score([w])[0] >= threshold]
        from_prompt = [w for w in flagged if w in prompt_words]
        echoed += bool(flagged) and len(from_prompt) == len(flagged)
        print(f"{item_id}: answer words also in the prompt {len(answer_words & prompt_words)}/{len(answer_words)}; "
              f"flagged words {len(flagged)}, of them in the prompt {len(from_prompt)}")
    print(f"harmful answers whose every flagged word is already in the prompt: {echoed}/{len(harmful)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
