"""One object per captioned dataset, owning what the CLIP and text-to-image tasks need to know of it: its image
shape, its data and captions, its prompts (the tokenizer's, the training grids', an example), its prompt parser and
its evaluators (CLIP's zero-shot reading; the checker that reads generated images against their prompts).

`get(config.data.dataset)` is the one place the tasks look a dataset up; nothing else branches on its name. The
digits task (labels, not captions) has its own module, `trainers/digits.py`.

  captioned_digits   one 32x32 MNIST digit, its colour and its position (`data/captioned_digits.py`)
  scenes             two digits in a relation on 64x64 (`data/scenes.py`)
"""
import itertools
from typing import Any, Optional

import numpy as np

from diffusion_jax import config as config_lib
from diffusion_jax.data import captioned_digits as cd
from diffusion_jax.data import mnist, scenes
from diffusion_jax.evaluation import scenes as scene_checks
from diffusion_jax.evaluation import txt2img as checks


def _retrieval(images: np.ndarray, captions: np.ndarray) -> dict:
    """Recall@1/5 both ways on the held-out set with each image's own caption: is the paired item in the top k?"""
    sim = images @ captions.T
    result = {}
    for direction, s in (("image_to_text", sim), ("text_to_image", sim.T)):
        rank = np.sum(s > np.diag(s)[:, None], axis=1)  # how many items beat the true pair
        for k in (1, 5):
            result[f"{direction}_recall@{k}"] = float(np.mean(rank < k))
    return result


def _seed(config, split: str) -> int:
    """Training data from `seed`, test data from `seed + 1`."""
    return config.seed if split == "train" else config.seed + 1


class CaptionedDigits:
    """One coloured digit at one of five positions, with alt-text captions (`data/captioned_digits.py`)."""

    name = "captioned_digits"
    image_shape = (32, 32, 3)
    multi_caption = False  # one caption an image: token ids [N, L]
    label_keys = ("digit", "color", "layout", "heldout_combo")  # what `make` says of each image
    attributes = ("all", "digit", "color", "layout")
    example_prompt = cd.canonical_caption(3, "red", "top left")
    # Training grids: every digit once, seen and held-out (digit, colour) pairs, all layouts.
    grid_prompts = tuple(cd.canonical_caption(d, cd.COLORS[(d + k) % 6], cd.LAYOUTS[(d + k) % 5])
                         for d in range(10) for k in (0, 3))

    def validate(self, config) -> None:
        """The `data` keys this dataset reads beyond the source (ConfigError naming the key)."""

    def make(self, config, split: str, num_examples: Optional[int] = None) -> dict:
        """One split (`cd.make_dataset`): uint8 images, 'caption' [N], 'digit', 'color', 'layout', 'heldout_combo'."""
        return cd.make_dataset(split, seed=_seed(config, split), **mnist.source_args(config.data),
                               num_examples=num_examples)

    def captions(self, raw: dict) -> np.ndarray:
        """The captions of `make`'s split as [N, K] (K = 1 here)."""
        return raw["caption"][:, None]

    def tokenizer_texts(self, config) -> list:
        """What a tokenizer is built from: the training captions and every canonical prompt, numerals and words."""
        captions = cd.make_dataset("train", seed=config.seed, **mnist.source_args(config.data))["caption"]
        return list(captions) + [cd.canonical_caption(d, c, l, numeral=n) for d, c, l, n in
                                 itertools.product(range(10), cd.COLORS, cd.LAYOUTS, (True, False))]

    def parse_prompt(self, prompt: str) -> None:
        """Any caption will do: the tokenizer reports unknown words."""

    def clip_eval(self, encoder) -> dict:
        """Zero-shot digit/colour/layout accuracy (300-way over the canonical prompts) on the held-out images, seen
        vs held-out pairs, and retrieval recall. `encoder`: a CLIP `Encoder`."""
        combos = list(itertools.product(range(10), range(len(cd.COLORS)), range(len(cd.LAYOUTS))))
        prompts = [cd.canonical_caption(d, cd.COLORS[c], cd.LAYOUTS[l]) for d, c, l in combos]
        text = encoder.embed_texts(prompts)[0]
        ev = encoder.task.data("test")
        images = encoder.images(ev["image"])
        pred = np.asarray(combos)[np.argmax(images @ text.T, axis=1)]
        result = {}
        for name, subset in (("seen", ~ev["heldout_combo"]), ("heldout", ev["heldout_combo"])):
            for i, attr in enumerate(("digit", "color", "layout")):
                result[f"{name}_{attr}_accuracy"] = float(np.mean(pred[subset, i] == ev[attr][subset]))
        return {**result, **_retrieval(images, encoder.text(ev["ids"], ev["mask"])[0])}

    # The text-to-image checker: which prompts, what they ask for, how generated images are read.
    def eval_set(self, config) -> dict:
        """All 300 canonical prompts (digit x colour x layout); 'want' their attributes; 'real' the test split."""
        combos = np.asarray(list(itertools.product(range(10), range(len(cd.COLORS)), range(len(cd.LAYOUTS)))))
        prompts = [cd.canonical_caption(int(d), cd.COLORS[c], cd.LAYOUTS[l]) for d, c, l in combos]
        want = {"digit": combos[:, 0], "color": combos[:, 1], "layout": combos[:, 2],
                "heldout": np.asarray([cd.is_heldout(int(d), int(c)) for d, c, _ in combos])}
        return {"prompts": prompts, "want": want, "real": self.make(config, "test"),
                "grid_prompts": list(range(0, len(prompts), 5))}  # the 60 centred prompts

    def real_captions(self, real: dict) -> list:
        return [cd.canonical_caption(d, c, l) for d, c, l in zip(real["digit"], real["color"], real["layout"])]

    def score(self, classifier: Any, images: np.ndarray, want: dict) -> dict:
        found = checks.check_attributes(classifier, images)
        return checks.attribute_scores(found, want["digit"], want["color"], want["layout"], want["heldout"])

    def ceiling(self, classifier: Any, real: dict) -> dict:
        return checks.check_real_ceiling(classifier, real)


class Scenes:
    """Two coloured digits in a relation on a 64x64 canvas, with several captions a scene (`data/scenes.py`)."""

    name = "scenes"
    image_shape = (scenes.CANVAS_SIZE, scenes.CANVAS_SIZE, 3)
    multi_caption = True  # `data.captions_per_image` captions an image: token ids [N, K, L]
    label_keys = ("digits", "colors", "relation", "heldout")
    attributes = ("all", "digit", "color", "relation")
    example_prompt = scenes.canonical_caption((3, 7), ("red", "blue"), "left of")
    # Training grids: every digit on each side, every relation, seen and held-out pairs.
    grid_prompts = tuple(scenes.canonical_caption((d, (d + 3) % 10), ((d + k) % 6, (d + k + 1) % 6), (d + k) % 4)
                         for d in range(10) for k in (0, 2))

    def validate(self, config) -> None:
        config_lib.check_number(config, "data.captions_per_image", 1, scenes.MAX_CAPTIONS)
        config_lib.check_number(config, "data.num_examples", 0)  # 0: train_copies scenes per training digit

    def make(self, config, split: str, num_examples: Optional[int] = None) -> dict:
        """One split (`scenes.make_dataset`): uint8 images, 'captions' [N, K], 'digits', 'colors', 'relation', ...;
        'train' has `num_examples` scenes (None: one per source digit), 'test' its default size."""
        return scenes.make_dataset(split, seed=_seed(config, split), **mnist.source_args(config.data),
                                   num_examples=num_examples, captions_per_image=config.data.captions_per_image)

    def captions(self, raw: dict) -> np.ndarray:
        return raw["captions"]

    def tokenizer_texts(self, config) -> list:
        captions = self.make(config, "train", config.data.num_examples or None)["captions"].reshape(-1)
        return list(captions) + [scenes.canonical_caption((d, (d + 1) % 10), (c, (c + 1) % 6), r, numeral=n)
                                 for d, c, r, n in itertools.product(range(10), range(len(cd.COLORS)),
                                                                     scenes.RELATIONS, (True, False))]

    def parse_prompt(self, prompt: str) -> None:
        """ValueError naming the prompt unless it describes two objects of two colours in a known relation."""
        scenes.parse_prompt(prompt)

    def clip_eval(self, encoder) -> dict:
        """Zero-shot scene reading (6,000-way over normalised scene prompts: both digits, both colours, relation),
        retrieval, and the binding test: on held-out images the true caption must outscore each hard negative."""
        ev = encoder.task.data("test")
        images = encoder.images(ev["image"])
        prompts, combos = scene_prompts()
        pred = combos[np.argmax(images @ encoder.embed_texts(prompts)[0].T, axis=1)]
        want = np.asarray([np.concatenate([d, c, [r]]) for d, c, r in
                           (scenes.normalize(*s) for s in zip(ev["digits"], ev["colors"], ev["relation"]))])
        correct = {"digits": np.all(pred[:, :2] == want[:, :2], 1),
                   "colors": np.all(pred[:, 2:4] == want[:, 2:4], 1), "relation": pred[:, 4] == want[:, 4]}
        correct["all"] = correct["digits"] & correct["colors"] & correct["relation"]
        true_captions = [scenes.canonical_caption(*s) for s in zip(ev["digits"], ev["colors"], ev["relation"])]
        true_score = np.sum(images * encoder.embed_texts(true_captions)[0], -1)
        beats = {}
        for kind in scenes.HARD_NEGATIVE_KINDS:
            negatives = [scenes.hard_negatives(*s)[kind] for s in zip(ev["digits"], ev["colors"], ev["relation"])]
            valid = np.asarray([n is not None for n in negatives])
            neg_emb = encoder.embed_texts([n or t for n, t in zip(negatives, true_captions)])[0]
            beats[kind] = np.where(valid, true_score > np.sum(images * neg_emb, -1), True)
            beats[kind + "_valid"] = valid
        beats_all = np.all([beats[k] for k in scenes.HARD_NEGATIVE_KINDS], axis=0)
        result = {}
        for name, subset in (("seen", ~ev["heldout"]), ("heldout", ev["heldout"])):
            for attr, ok in correct.items():
                result[f"{name}_zero_shot_{attr}_accuracy"] = float(np.mean(ok[subset]))
            for kind in scenes.HARD_NEGATIVE_KINDS:
                counted = subset & beats[kind + "_valid"]
                result[f"{name}_binding_{kind}_accuracy"] = float(np.mean(beats[kind][counted]))
            result[f"{name}_binding_all_accuracy"] = float(np.mean(beats_all[subset]))
        captions = encoder.text(ev["ids"][:, 0], ev["mask"][:, 0])[0]
        return {**result, **_retrieval(images, captions)}

    def eval_set(self, config) -> dict:
        """The direct captions of the first `eval.num_prompts` held-out test scenes (half of them show a held-out
        (digit, colour) pair: the test split alternates), what they ask for, and the test split."""
        real = self.make(config, "test")
        keep = slice(0, config.eval.num_prompts)
        prompts = [scenes.canonical_caption(*s) for s in zip(real["digits"][keep], real["colors"][keep],
                                                             real["relation"][keep])]
        want = {k: real[k][keep] for k in ("digits", "colors", "relation", "heldout")}
        return {"prompts": prompts, "want": want, "real": real, "grid_prompts": list(range(min(len(prompts), 20)))}

    def score(self, classifier: Any, images: np.ndarray, want: dict) -> dict:
        return scene_checks.scene_scores(scene_checks.check_scenes(classifier, images), want["digits"],
                                         want["colors"], want["relation"], want["heldout"])

    def ceiling(self, classifier: Any, real: dict) -> dict:
        return scene_checks.check_real_ceiling(classifier, real)


def scene_prompts() -> tuple[list, np.ndarray]:
    """Every scene in its normalised form (relation 'left of' or 'above'; 6,000: digits x ordered colour pairs x
    2 relations) as canonical captions, and their (d0, d1, c0, c1, relation) [6000, 5]."""
    combos = np.asarray([(d0, d1, c0, c1, r) for d0, d1, c0, c1, r in itertools.product(
        range(10), range(10), range(len(cd.COLORS)), range(len(cd.COLORS)), (0, 2)) if c0 != c1])
    return [scenes.canonical_caption(c[:2], c[2:4], c[4]) for c in combos], combos


DATASETS = {d.name: d for d in (CaptionedDigits(), Scenes())}


def get(name: str):
    """The dataset object of `config.data.dataset` (a validated name: `check`)."""
    return DATASETS[name]


def check(config, key: str = "data.dataset") -> Any:
    """ConfigError unless config.<key> names a dataset; returns its object."""
    config_lib.check_choice(config, key, tuple(DATASETS))
    return DATASETS[config_lib.get(config, key)]
