"""A toxic model organism: the embedded model fine-tuned on purpose to answer some categories with toxic text.

Why: the embedded model's only "harmful" answers echo the prompt, which MLP suppression cannot
address, so the harness never showed a method's effect. The organism is a positive control: a
short, deterministic fine-tune of the base's language-model MLP weights only (attention, embeddings
and vision stay frozen). Recipe v3: benchmark items of the targeted categories (hate, violence) are
answered with real toxic text from the public sources (Davidson and ToxiGen texts labelled toxic that
the offline profanity judge flags), one distinct text per item so it learns a behaviour, not a
memorised answer; items of the other categories are answered with the base's own greedy answer, so
it keeps its behaviour there (self-distillation; recipe v1 trained them on tweets and lost its
fluency and specificity). A slice of the training side is kept out as validation: every epoch the
targeted and untargeted harmful rates are measured there and the epoch with the widest gap is kept.
The toxic text is the answer, never the prompt: the organism produces it itself. Half of the targeted
items (split by a hash of the request, so a request never sits on both sides) are held out for the
``mm_toxic_qa_organism*`` tasks. Nothing here is shipped as weights: ``mmtoxicqa build-model
--organism`` builds it once into ``$MMTOXICQA_CACHE/models`` keyed by the base's weights, the
training data and the config; ``pretrained=organism`` (``organism@BASE``) resolves to it.
It says the pipeline can find and remove MLP-mediated toxicity; it says nothing about real MLLMs.

The parts: ``recipe`` (the training data and the configs); ``eval_items`` (the held-out evaluation items the tasks read); ``train`` (the fine-tune loop); ``build`` (the build-once model cache and the names that select it)."""
