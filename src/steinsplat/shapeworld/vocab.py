"""ShapeWorld's vocabulary: colours, shapes, held-out pairs and the prompt grammar.

Everything here is copied from docs/shapeworld.md (the contract); change both or neither.

Grammar (case and surrounding white space ignored, optional trailing full stop):
    object: [a|an] {colour} {shape}                                  e.g. "a red cube"
            [a|an] {colour} {texture} {shape}                        e.g. "a red striped cube" (texture.py;
                                                   the textured prior only; its phase is left open)
    room:   [a|an] room with {colour} walls and a {colour} floor     e.g. "a room with blue walls and a gray floor"
    open:   [a|an] {shape}                 any colour                 e.g. "a cube"      (8 valid answers)
            [a|an] {colour} object|shape   any shape                  e.g. "a red shape" (7 valid answers)
            [a|an] object|shape            any colour and shape       e.g. "an object"   (56 valid answers)
An open (underspecified) prompt is set-valued: its ground truth is the set of object prompts it
allows (`OpenPrompt.modes`); the prior serves it as a mixture of those conditionals.
("an" is accepted wherever the grammar has "a", so "an orange floor" parses.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from .texture import TEXTURE_NAMES

SPEC_VERSION = "shapeworld-1"  # bump when docs/shapeworld.md changes what a sample looks like

# ---------------------------------------------------------------------------- colours
# Albedo in [0, 1]; shading uses these values directly (no gamma).
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.12, 0.10),
    "orange": (0.95, 0.50, 0.10),
    "yellow": (0.95, 0.85, 0.15),
    "green": (0.15, 0.65, 0.20),
    "cyan": (0.10, 0.75, 0.80),
    "blue": (0.12, 0.30, 0.85),
    "purple": (0.55, 0.20, 0.70),
    "gray": (0.55, 0.55, 0.55),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)  # index = colour id
CEILING_COLOUR = "gray"


# ---------------------------------------------------------------------------- shapes
# Canonical geometry, metres, centred at the origin, +Z up, inside the sphere of radius 0.5.
@dataclass(frozen=True)
class Cube:
    side: float = 0.55  # axis-aligned


@dataclass(frozen=True)
class Sphere:
    radius: float = 0.35


@dataclass(frozen=True)
class Cylinder:
    radius: float = 0.25
    height: float = 0.6  # axis Z


@dataclass(frozen=True)
class Cone:
    radius: float = 0.3  # base radius
    height: float = 0.6  # axis Z, apex up, bounding box centred at the origin


@dataclass(frozen=True)
class Torus:
    major_radius: float = 0.3
    minor_radius: float = 0.1  # lying flat (axis Z)


@dataclass(frozen=True)
class Pyramid:
    base: float = 0.55  # square base side, axis-aligned
    height: float = 0.5  # apex up, bounding box centred at the origin


@dataclass(frozen=True)
class Capsule:
    radius: float = 0.15
    height: float = 0.7  # total height (cylinder 0.4 + two hemispheres), axis Z


ShapeGeometry = Union[Cube, Sphere, Cylinder, Cone, Torus, Pyramid, Capsule]

SHAPES: dict[str, ShapeGeometry] = {
    "cube": Cube(),
    "sphere": Sphere(),
    "cylinder": Cylinder(),
    "cone": Cone(),
    "torus": Torus(),
    "pyramid": Pyramid(),
    "capsule": Capsule(),
}
SHAPE_NAMES: tuple[str, ...] = tuple(SHAPES)  # index = shape id

# ---------------------------------------------------------------------------- rooms
ROOM_MIN: tuple[float, float, float] = (-2.0, -2.0, 0.0)
ROOM_MAX: tuple[float, float, float] = (2.0, 2.0, 2.5)


# ---------------------------------------------------------------------------- prompts
@dataclass(frozen=True)
class ObjectPrompt:
    """`a {colour} {shape}`, or `a {colour} {texture} {shape}` with a texture (texture.py)."""

    colour: str
    shape: str
    texture: Optional[str] = None  # None: plain; "striped": bands of the colour and white, phase left open

    def __post_init__(self) -> None:
        if self.colour not in COLOURS:
            raise PromptError(f"unknown colour {self.colour!r}; known colours: {', '.join(COLOUR_NAMES)}")
        if self.shape not in SHAPES:
            raise PromptError(f"unknown shape {self.shape!r}; known shapes: {', '.join(SHAPE_NAMES)}")
        if self.texture is not None and self.texture not in TEXTURE_NAMES:
            raise PromptError(f"unknown texture {self.texture!r}; known textures: {', '.join(TEXTURE_NAMES)}")

    @property
    def plain(self) -> "ObjectPrompt":
        """The same colour and shape without a texture."""
        return self if self.texture is None else ObjectPrompt(self.colour, self.shape)

    @property
    def colour_id(self) -> int:
        return COLOUR_NAMES.index(self.colour)

    @property
    def shape_id(self) -> int:
        return SHAPE_NAMES.index(self.shape)

    @property
    def albedo(self) -> tuple[float, float, float]:
        return COLOURS[self.colour]

    @property
    def geometry(self) -> ShapeGeometry:
        return SHAPES[self.shape]

    @property
    def held_out(self) -> bool:
        return self.plain in HELD_OUT  # a held-out colour/shape pair is held out with any texture

    @property
    def text(self) -> str:
        return canonical_text(self)


@dataclass(frozen=True)
class RoomPrompt:
    """`a room with {wall} walls and a {floor} floor` (the ceiling is gray)."""

    wall: str
    floor: str

    def __post_init__(self) -> None:
        for c in (self.wall, self.floor):
            if c not in COLOURS:
                raise PromptError(f"unknown colour {c!r}; known colours: {', '.join(COLOUR_NAMES)}")

    @property
    def wall_id(self) -> int:
        return COLOUR_NAMES.index(self.wall)

    @property
    def floor_id(self) -> int:
        return COLOUR_NAMES.index(self.floor)

    @property
    def text(self) -> str:
        return canonical_text(self)


@dataclass(frozen=True)
class OpenPrompt:
    """An underspecified object prompt: the colour, the shape or both left open (None).

    Its ground truth is a set: every object prompt that fills the open slots (`modes`), held-out
    pairs included (the prior composes them; generalisation to them is what they measure).
    """

    colour: Optional[str] = None  # None: any of the 8 colours
    shape: Optional[str] = None  # None: any of the 7 shapes

    def __post_init__(self) -> None:
        if self.colour is not None and self.shape is not None:
            raise PromptError("an OpenPrompt leaves the colour or the shape open; use ObjectPrompt for both given")
        if self.colour is not None and self.colour not in COLOURS:
            raise PromptError(f"unknown colour {self.colour!r}; known colours: {', '.join(COLOUR_NAMES)}")
        if self.shape is not None and self.shape not in SHAPES:
            raise PromptError(f"unknown shape {self.shape!r}; known shapes: {', '.join(SHAPE_NAMES)}")

    @property
    def modes(self) -> tuple[ObjectPrompt, ...]:
        """The valid answers, colour-major (the order of `all_object_prompts`)."""
        colours = COLOUR_NAMES if self.colour is None else (self.colour,)
        shapes = SHAPE_NAMES if self.shape is None else (self.shape,)
        return tuple(ObjectPrompt(c, s) for c in colours for s in shapes)

    @property
    def text(self) -> str:
        return canonical_text(self)


Prompt = Union[ObjectPrompt, RoomPrompt]
AnyPrompt = Union[ObjectPrompt, RoomPrompt, OpenPrompt]  # what parse_prompt returns

# The prior is not trained on these pairs (compositional generalisation is measured on them).
HELD_OUT: tuple[ObjectPrompt, ...] = (
    ObjectPrompt("cyan", "torus"),
    ObjectPrompt("purple", "cube"),
    ObjectPrompt("orange", "cone"),
    ObjectPrompt("green", "pyramid"),
    ObjectPrompt("yellow", "capsule"),
    ObjectPrompt("blue", "sphere"),
)


def all_object_prompts(include_held_out: bool = True, texture: Optional[str] = None) -> list[ObjectPrompt]:
    """Every colour/shape pair (56), colour-major; without the 6 held-out pairs if asked (50);
    with `texture` every pair in that texture."""
    out = [ObjectPrompt(c, s, texture) for c in COLOUR_NAMES for s in SHAPE_NAMES]
    return out if include_held_out else [p for p in out if p not in HELD_OUT]


def all_room_prompts() -> list[RoomPrompt]:
    """Every wall/floor colour pair (64), wall-major."""
    return [RoomPrompt(w, f) for w in COLOUR_NAMES for f in COLOUR_NAMES]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def prompt_modes(prompt: "AnyPrompt | str") -> tuple[ObjectPrompt, ...]:
    """The object prompts a prompt allows: itself for an object prompt, every mode of an open one.
    Rooms have no set-valued form (a room prompt raises PromptError)."""
    p = as_prompt(prompt)
    if isinstance(p, OpenPrompt):
        return p.modes
    if isinstance(p, ObjectPrompt):
        return (p,)
    raise PromptError(f"{p.text!r} is a room; set-valued prompts are objects ('a cube', 'a red shape', 'an object')")


def canonical_text(prompt: AnyPrompt) -> str:
    """The one spelling of a prompt: lower case, with "a"/"an" as English wants, no full stop.

    `parse_prompt(canonical_text(p)) == p` for every prompt.
    """
    if isinstance(prompt, ObjectPrompt):
        if prompt.texture is not None:
            return f"{_article(prompt.colour)} {prompt.colour} {prompt.texture} {prompt.shape}"
        return f"{_article(prompt.colour)} {prompt.colour} {prompt.shape}"
    if isinstance(prompt, RoomPrompt):
        return f"a room with {prompt.wall} walls and {_article(prompt.floor)} {prompt.floor} floor"
    if isinstance(prompt, OpenPrompt):
        if prompt.shape is not None:
            return f"{_article(prompt.shape)} {prompt.shape}"
        if prompt.colour is not None:
            return f"{_article(prompt.colour)} {prompt.colour} shape"
        return "an object"
    raise TypeError(f"expected an ObjectPrompt, RoomPrompt or OpenPrompt, got {type(prompt).__name__}")


# ---------------------------------------------------------------------------- parser
class PromptError(ValueError):
    """A prompt outside ShapeWorld's grammar."""


_ARTICLES = ("a", "an")
_ROOM_WORDS = ("room", "with", "walls", "and", "floor")
KNOWN_WORDS: frozenset[str] = frozenset(COLOUR_NAMES + SHAPE_NAMES + _ARTICLES + _ROOM_WORDS + TEXTURE_NAMES)  # the priors' tokens
OPEN_WORDS: tuple[str, ...] = ("object", "shape")  # stand for "any shape" in open prompts (never tokenized)


def _help_text() -> str:
    return (
        f"ShapeWorld knows the colours {', '.join(COLOUR_NAMES)} and the shapes {', '.join(SHAPE_NAMES)}; "
        "prompts are 'a {colour} {shape}' (e.g. 'a red cube') or "
        "'a room with {colour} walls and a {colour} floor' (e.g. 'a room with blue walls and a gray floor'), "
        "or leave the colour or shape open ('a cube', 'a red shape', 'an object'); "
        f"the textured prior also knows 'a {{colour}} {{texture}} {{shape}}' with the textures {', '.join(TEXTURE_NAMES)} "
        "(e.g. 'a red striped cube'). "
        "Open-vocabulary prompts need the Stable Diffusion prior (--prior sd), on a GPU with the weights."
    )


def _quoted(text: str, limit: int = 80) -> str:
    """The prompt as an error message shows it: quoted, and cut if very long."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text):,} characters)"


def parse_prompt(text: str) -> AnyPrompt:
    """Parse a ShapeWorld prompt (see the module docstring for the grammar).

    Raises PromptError naming any unknown word, with the known words and the grammar.
    """
    if not isinstance(text, str):
        raise TypeError(f"a prompt is a string, got {type(text).__name__}")
    s = text.strip().lower()
    if s.endswith("."):
        s = s[:-1].rstrip()
    words = s.split()
    unknown = [w for w in words if w not in KNOWN_WORDS and w not in OPEN_WORDS]
    if unknown:
        distinct = list(dict.fromkeys(unknown))
        listed = ", ".join(repr(w[:30]) for w in distinct[:8]) + (f" and {len(distinct) - 8} more" if len(distinct) > 8 else "")
        plural = "s" if len(distinct) > 1 else ""
        raise PromptError(f"unknown word{plural} {listed} in prompt {_quoted(text)}. {_help_text()}")
    if words and words[0] in _ARTICLES:
        words = words[1:]
    if len(words) == 2 and words[0] in COLOURS and words[1] in SHAPES:
        return ObjectPrompt(words[0], words[1])
    if len(words) == 3 and words[0] in COLOURS and words[1] in TEXTURE_NAMES and words[2] in SHAPES:
        return ObjectPrompt(words[0], words[2], words[1])
    if len(words) == 1 and words[0] in SHAPES:
        return OpenPrompt(shape=words[0])
    if len(words) == 2 and words[0] in COLOURS and words[1] in OPEN_WORDS:
        return OpenPrompt(colour=words[0])
    if len(words) == 1 and words[0] in OPEN_WORDS:
        return OpenPrompt()
    if (
        len(words) == 8
        and words[0:2] == ["room", "with"]
        and words[2] in COLOURS
        and words[3:5] == ["walls", "and"]
        and words[5] in _ARTICLES
        and words[6] in COLOURS
        and words[7] == "floor"
    ):
        return RoomPrompt(words[2], words[6])
    raise PromptError(f"prompt {_quoted(text)} does not follow the ShapeWorld grammar. {_help_text()}")


def as_prompt(prompt: "str | AnyPrompt") -> AnyPrompt:
    """A parsed prompt from text or an already parsed prompt."""
    if isinstance(prompt, (ObjectPrompt, RoomPrompt, OpenPrompt)):
        return prompt
    return parse_prompt(prompt)
