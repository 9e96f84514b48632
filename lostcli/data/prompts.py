"""Text prompts: an offline generator of diverse object prompts, the LLM template, and built-in-set prompts.

`generate_prompts` combines curated word lists over the five groups the paper's prompt set covers
(everyday objects and tools, characters and creatures, architecture, vehicles and machinery,
organic things: flora, fauna and food). `PROMPT_TEMPLATE` asks a language model for such a list
when one is available. `synth_prompts` phrases prompts the way the built-in dataset's captions do,
for evaluating text-to-shape on the built-in categories. `read_prompt_lines` / `read_prompt_file` read a prompt
file (one prompt per line, optionally CATEGORY<TAB>prompt) for generation, evaluation and `lost dataset images`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lostcli.data.synth import CATEGORIES, caption_from_params, sample_params
from lostcli.errors import ConfigError, DataError

PROMPT_TEMPLATE: str = """\
You write prompts for a text-to-3D model that produces one standalone object per prompt.
Write {n} prompts. Each prompt names a single object or figure and says what it looks like:
its overall form, its parts, proportions, material, surface finish, age or condition, and style.

Spread the list evenly over these five groups:
1. Everyday objects, tools and artifacts: kitchenware, furniture, gadgets, instruments, sports gear,
   toys, clothing and accessories, jewellery, office supplies, relics and antiques.
2. Characters, creatures and figurines: ordinary people of all ages and trades, historical figures,
   heroes and villains of books, films, games and cartoons, fantasy and science-fiction beings,
   stylised mascots and collectible figures, often in a clear pose.
3. Architecture and structures: houses, towers, bridges, temples, monuments, ruins, interiors
   such as staircases or fountains, landmark buildings from many countries and eras.
4. Vehicles and machinery: cars, motorcycles, trains, boats, aircraft, farm and construction
   machines, robots, engines and scientific apparatus, in any condition from new to wrecked.
5. Organic things: wild and domestic animals, mythical beasts, plants, flowers, trees, fungi,
   fruit and vegetables, and prepared food and drinks.

Mostly realistic, everyday subjects; only a few futuristic ones. Vary sizes, eras, cultures and
styles (realistic, stylised, low-poly, clay, cel-shaded). Never repeat a subject or a phrasing.

Output format: exactly {n} lines, numbered "1." to "{n}.", one prompt per line, and nothing else:
no heading, no commentary, no blank lines, no code fences.
"""


@dataclass(frozen=True)
class PromptGroup:
    """Word lists of one prompt group."""

    nouns: tuple[str, ...]  # subjects, e.g. "brass telescope"
    looks: tuple[str, ...]  # leading descriptors, e.g. "weathered"
    details: tuple[str, ...]  # trailing phrases, e.g. "with ornate engravings"


PROMPT_GROUPS: dict[str, PromptGroup] = {
    "artifacts": PromptGroup(
        nouns=("telescope", "pocket watch", "teapot", "oil lantern", "compass", "claw hammer", "wrench",
               "typewriter", "film camera", "gramophone", "violin", "acoustic guitar", "trumpet", "accordion",
               "skateboard", "baseball glove", "tennis racket", "backpack", "sneaker", "cowboy boot", "top hat",
               "umbrella", "desk fan", "alarm clock", "hourglass", "chess knight", "rubber duck", "kettle",
               "sewing kit", "fountain pen", "stapler", "lunch box", "jewelry box", "crown", "ceremonial mask",
               "dagger", "shield", "helmet", "music box", "snow globe", "rocking horse", "toy robot",
               "wind-up mouse", "bento box", "candle holder", "padlock", "key", "goblet", "vase", "armchair"),
        looks=("antique", "weathered", "polished", "ornate", "minimalist", "miniature", "oversized", "vintage",
               "hand-carved", "battered", "gleaming", "rustic", "art deco", "Victorian", "modern", "tiny",
               "chunky", "elegant", "well-worn", "brand-new"),
        details=("made of brass", "made of oak wood", "made of porcelain", "made of cast iron", "made of glass",
                 "made of silver", "made of leather", "with ornate engravings", "covered in stickers",
                 "with chipped paint", "inlaid with gemstones", "with a cracked surface", "in a low-poly style",
                 "as a clay model", "in a cel-shaded style", "highly detailed", "with rounded edges",
                 "resting on a small stand"),
    ),
    "characters": PromptGroup(
        nouns=("knight in plate armor", "samurai warrior", "astronaut", "wizard with a staff", "pirate captain",
               "ballerina", "firefighter", "chef", "old fisherman", "detective in a trench coat", "viking warrior",
               "cowgirl", "elf archer", "dwarf blacksmith", "goblin", "troll", "dragon", "griffin", "phoenix",
               "minotaur", "mermaid", "centaur", "cyclops", "kraken", "gnome", "witch on a broom", "ninja",
               "robot butler", "clockwork soldier", "snowman", "scarecrow", "jester", "pharaoh", "gladiator",
               "skateboarder", "little girl with a balloon", "grandfather reading", "boxer", "tennis player",
               "superhero", "space marine", "forest spirit", "vampire count", "zombie", "yeti", "tiny alien"),
        looks=("heroic", "chibi", "stylized", "realistic", "low-poly", "cartoonish", "menacing", "cheerful",
               "ancient", "battle-worn", "regal", "tiny", "giant", "elderly", "young", "mischievous",
               "sleepy", "fierce"),
        details=("in a dynamic pose", "standing on a round base", "mid-leap", "holding a lantern",
                 "with a flowing cape", "as a bronze statue", "as a collectible figurine", "as a marble bust",
                 "sitting cross-legged", "waving", "in full armor", "with folded arms", "running",
                 "as a clay figurine", "in a cel-shaded style", "highly detailed", "carved from wood"),
    ),
    "architecture": PromptGroup(
        nouns=("lighthouse", "windmill", "pagoda", "gothic cathedral", "log cabin", "castle tower", "stone bridge",
               "water tower", "Greek temple", "clock tower", "gazebo", "treehouse", "igloo", "stepped pyramid",
               "spiral staircase", "fountain", "wishing well", "greenhouse", "red barn", "torii gate", "obelisk",
               "Roman arch", "Brutalist apartment block", "Victorian townhouse", "Japanese teahouse",
               "desert fortress", "medieval gatehouse", "bell tower", "beach hut", "farmhouse", "chapel",
               "skyscraper", "radio tower", "domed observatory", "ruined abbey", "stone well", "pavilion",
               "mosque with minarets", "Dutch canal house", "stilt house"),
        looks=("crumbling", "ornate", "tiny", "towering", "abandoned", "whimsical", "sleek", "ancient", "modern",
               "snow-covered", "moss-covered", "half-ruined", "colonial", "fairy-tale", "brutalist", "rustic"),
        details=("built of red brick", "built of sandstone", "built of timber", "made of white marble",
                 "with a tiled roof", "with arched windows", "on a rocky outcrop", "with a wraparound porch",
                 "with ivy on its walls", "as an architectural model", "in a low-poly style",
                 "in a claymation style", "with a spiral staircase outside", "highly detailed"),
    ),
    "machines": PromptGroup(
        nouns=("steam locomotive", "motorcycle", "tractor", "bulldozer", "excavator", "sailboat", "submarine",
               "hot air balloon", "biplane", "helicopter", "fire truck", "double-decker bus", "forklift",
               "scooter", "bicycle", "army tank", "canoe", "jet ski", "lunar rover", "sewing machine",
               "steam engine", "tower crane", "racing car", "tram", "fishing trawler", "cement mixer",
               "vintage car", "go-kart", "snowmobile", "industrial robot arm", "espresso machine",
               "printing press", "microscope", "telescope mount", "drone", "airship", "rowing boat",
               "combine harvester", "wheelbarrow", "ice cream van"),
        looks=("rusted", "pristine", "battle-damaged", "vintage", "futuristic", "toy-like", "heavy-duty",
               "abandoned", "streamlined", "boxy", "miniature", "weathered", "restored", "military"),
        details=("overgrown with moss", "with peeling paint", "covered in mud", "with chrome trim",
                 "with exposed gears", "as a scale model", "in a low-poly style", "in a cel-shaded style",
                 "with big rubber tires", "with riveted steel plates", "highly detailed", "made of brass",
                 "painted with racing stripes"),
    ),
    "organic": PromptGroup(
        nouns=("snow leopard", "elephant", "giraffe", "tortoise", "octopus", "barn owl", "red fox", "tree frog",
               "hermit crab", "seahorse", "stag beetle", "chameleon", "hedgehog", "kangaroo", "horse", "penguin",
               "hydra", "unicorn", "cactus", "sunflower", "venus flytrap", "mushroom cluster", "pineapple",
               "pumpkin", "croissant", "cupcake", "sushi platter", "bowl of ramen", "cheeseburger",
               "layered cake", "watermelon slice", "oak tree", "coral branch", "succulent in a pot", "pine cone",
               "lobster", "bunch of grapes", "artichoke", "pretzel", "glass of lemonade", "stack of pancakes",
               "orchid", "tulip bouquet", "palm tree", "baobab tree", "dragon fruit"),
        looks=("photorealistic", "stylized", "giant", "tiny", "juicy", "freshly baked", "wild", "sleeping",
               "curious", "ancient", "blooming", "ripe", "half-eaten", "glossy", "fuzzy", "spiky"),
        details=("mid-leap", "on a mossy rock", "in a terracotta pot", "on a wooden plate", "on a ceramic plate",
                 "as a taxidermy display", "in a low-poly style", "as a clay model", "highly detailed",
                 "with dew drops", "curled up", "with its mouth open", "sliced in half", "dusted with sugar"),
    ),
}

_TEMPLATES = (
    "{a} {look} {noun} {detail}",
    "{a} {look} {noun}",
    "{a} {noun} {detail}",
    "{look} {noun}, {detail}",
    "{a} {look} {noun}, {detail}",
)


def _article(word: str) -> str:
    return "an" if word[0].lower() in "aeiou" else "a"


def _compose(group: PromptGroup, rng: np.random.Generator) -> str:
    noun = group.nouns[int(rng.integers(len(group.nouns)))]
    look = group.looks[int(rng.integers(len(group.looks)))]
    detail = group.details[int(rng.integers(len(group.details)))]
    template = _TEMPLATES[int(rng.integers(len(_TEMPLATES)))]
    first = look if template.startswith("{a} {look}") else noun
    return template.format(a=_article(first), look=look, noun=noun, detail=detail)


def prompt_capacity() -> int:
    """A lower bound on how many distinct prompts `generate_prompts` can make."""
    return sum(len(g.nouns) * len(g.looks) * len(g.details) for g in PROMPT_GROUPS.values())


def generate_prompts(n: int, seed: int) -> list[str]:
    """n unique object prompts, balanced over the five groups, deterministic for a seed.

    Returns:
        list of n strings, e.g. "a weathered telescope made of brass".
    """
    if n < 0:
        raise ConfigError(f"n must be non-negative, got {n}")
    if n > prompt_capacity() // 4:  # keep rejection sampling cheap
        raise DataError(f"cannot make {n} unique prompts offline; at most {prompt_capacity() // 4}")
    rng = np.random.default_rng(seed)
    groups = list(PROMPT_GROUPS.values())
    order = rng.permutation(len(groups))
    seen: set[str] = set()
    prompts: list[str] = []
    while len(prompts) < n:  # item k draws from group k mod 5 (in a seeded order)
        prompt = _compose(groups[int(order[len(prompts) % len(groups)])], rng)
        if prompt not in seen:
            seen.add(prompt)
            prompts.append(prompt)
    return prompts


def synth_prompt_items(n: int, seed: int) -> list[tuple[str, str]]:
    """n (category, prompt) pairs phrased like the built-in captions, categories round-robin."""
    if n < 0:
        raise ConfigError(f"n must be non-negative, got {n}")
    items: list[tuple[str, str]] = []
    seen: set[str] = set()
    for k in range(n):
        category = CATEGORIES[k % len(CATEGORIES)]
        rng = np.random.default_rng([seed, k, 0x9E])
        for _ in range(20):  # resample a few times to avoid duplicate prompts
            prompt = caption_from_params(category, sample_params(category, rng), rng)
            if prompt not in seen:
                break
        seen.add(prompt)
        items.append((category, prompt))
    return items


def synth_prompts(n: int, seed: int) -> list[str]:
    """n prompts over the built-in categories (round-robin), e.g. "a bar stool with three legs"."""
    return [prompt for _, prompt in synth_prompt_items(n, seed)]


@dataclass(frozen=True)
class PromptLine:
    """One prompt of a prompt file."""

    line: int  # 1-based line number in the file
    category: str | None  # the optional CATEGORY<TAB> column
    prompt: str


@dataclass(frozen=True)
class PromptFile:
    """The prompts of a file and what was skipped to get them."""

    path: Path
    items: list[PromptLine]
    blank: int  # empty or whitespace-only lines skipped
    comments: int  # lines starting with '#' skipped


_LIST_NUMBER = re.compile(r"^\d+[.)]\s+")  # "12. " / "12) ": the numbering PROMPT_TEMPLATE asks a language model for


def read_prompt_lines(path: str | Path, numbered: bool = False) -> PromptFile:
    """A prompt file line by line: one prompt per line, or "CATEGORY<TAB>prompt"; blank lines and lines
    starting with # are skipped and counted.

    Args:
        numbered: drop a leading list number ("12. a brass telescope"), as a language model answering
            `PROMPT_TEMPLATE` writes them.

    Raises:
        DataError: missing, unreadable, or no prompt in it (one line naming the file).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: prompt file not found" if not path.exists() else f"{path}: not a prompt file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the prompt file ({type(e).__name__})") from None
    items: list[PromptLine] = []
    blank = comments = 0
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            blank += 1
            continue
        if line.lstrip().startswith("#"):
            comments += 1
            continue
        cat, _, prompt = line.partition("\t") if "\t" in line else ("", "", line)
        prompt = _LIST_NUMBER.sub("", prompt.strip()) if numbered else prompt.strip()
        if not prompt:
            raise DataError(f"{path}:{lineno}: empty prompt in line {line!r}")
        items.append(PromptLine(lineno, cat.strip() or None, prompt))
    if not items:
        what = "empty file" if not lines else f"{blank} blank and {comments} comment lines"
        raise DataError(f"{path}: no prompts ({what}; one per line, optionally CATEGORY<TAB>prompt)")
    return PromptFile(path, items, blank, comments)


def read_prompt_file(path: str | Path) -> list[tuple[str | None, str]]:
    """A prompt file as (category or None, prompt) pairs (`read_prompt_lines`): one prompt per line, or
    "CATEGORY<TAB>prompt" to grade class accuracy; blank lines and lines starting with # are skipped.

    Raises:
        DataError: missing, unreadable, or no prompt in it (one line naming the file).
    """
    return [(item.category, item.prompt) for item in read_prompt_lines(path).items]
