"""The one harm taxonomy of MM-TOXIC-QA, and how every source's own labels map onto it.

Every row's ``category`` is one of :data:`CATEGORIES`. Each source keeps its own
label set; the dicts below are the explicit, reviewed mapping from those labels to
ours. A source label that is not listed is a malformed row (skipped and counted),
never silently filed under ``other``.
"""

from __future__ import annotations

CATEGORIES: tuple[str, ...] = (
    "hate",  # demeaning or dehumanising a protected group
    "harassment",  # insults, slurs, abuse aimed at a person; offensive language
    "violence",  # physical harm to people, weapons, terrorism
    "sexual",  # adult sexual content, sexual exploitation
    "self_harm",  # suicide, self-injury, eating disorders
    "illegal_activity",  # drugs, theft, trafficking, evading law enforcement
    "fraud",  # scams, deception, economic harm (gambling, pyramid schemes)
    "privacy",  # surveillance, doxxing, collecting personal data
    "malware",  # writing or deploying malicious software, intrusion
    "health_misinfo",  # unqualified medical advice and health misinformation
    "regulated_advice",  # tailored legal, financial or high-stakes government advice
    "political",  # political campaigning, lobbying, election manipulation
    "other",  # researcher items that fit none of the above
)

# FigStep SafeBench: category_id -> (upstream category_name, our category)
FIGSTEP_CATEGORIES: dict[int, tuple[str, str]] = {
    1: ("Illegal Activity", "illegal_activity"),
    2: ("Hate Speech", "hate"),
    3: ("Malware Generation", "malware"),
    4: ("Physical Harm", "violence"),
    5: ("Fraud", "fraud"),
    6: ("Adult Content", "sexual"),
    7: ("Privacy Violation", "privacy"),
    8: ("Legal Opinion", "regulated_advice"),
    9: ("Financial Advice", "regulated_advice"),
    10: ("Health Consultation", "health_misinfo"),
}

# MM-SafetyBench: scenario file stem (upstream spelling, typos kept) -> our category
MMSAFETYBENCH_SCENARIOS: dict[str, str] = {
    "01-Illegal_Activitiy": "illegal_activity",
    "02-HateSpeech": "hate",
    "03-Malware_Generation": "malware",
    "04-Physical_Harm": "violence",
    "05-EconomicHarm": "fraud",
    "06-Fraud": "fraud",
    "07-Sex": "sexual",
    "08-Political_Lobbying": "political",
    "09-Privacy_Violence": "privacy",
    "10-Legal_Opinion": "regulated_advice",
    "11-Financial_Advice": "regulated_advice",
    "12-Health_Consultation": "health_misinfo",
    "13-Gov_Decision": "regulated_advice",
}

# ToxiGen prompt files: target group -> our category. Every group's statements
# (hateful or neutral) are about a protected group, so all map to ``hate``;
# the hateful/neutral distinction is carried by ``toxic_label``.
TOXIGEN_HATE_GROUPS: tuple[str, ...] = (
    "asian",
    "bisexual",
    "black",
    "chinese",
    "immigrant",
    "jewish",
    "latino",
    "lgbtq",
    "mental_disability",
    "mexican",
    "middle_east",
    "muslim",
    "native_american",
    "physical_disability",
    "trans",
    "women",
)
# Upstream ships no neutral_trans_1k.txt, so the neutral side has 15 groups.
TOXIGEN_NEUTRAL_GROUPS: tuple[str, ...] = tuple(g for g in TOXIGEN_HATE_GROUPS if g != "trans")
TOXIGEN_GROUP_CATEGORY: dict[str, str] = {g: "hate" for g in TOXIGEN_HATE_GROUPS}

# Davidson et al. 2017 labeled_data.csv: class -> (label name, our category, toxic_label)
DAVIDSON_CLASSES: dict[int, tuple[str, str, int]] = {
    0: ("hate_speech", "hate", 1),
    1: ("offensive_language", "harassment", 1),
    2: ("neither", "other", 0),  # non-toxic tweets: used only as calibration negatives
}


def check_category(name: str) -> str:
    """Return ``name`` if it is a taxonomy category, else raise ValueError listing the valid ones."""
    if name not in CATEGORIES:
        raise ValueError(f"unknown category {name!r}; use one of {', '.join(CATEGORIES)}")
    return name
