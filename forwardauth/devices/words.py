"""Phrases of three common words, and the three choices a device shows.

The browser that asked for approval shows one phrase; the device shows three
(that one and two decoys, in random order) and the user must pick the one the
browser shows. Tapping without looking is then a two-in-three chance of
denying the request, and a wrong pick is audited and counted by regulation:
this is what stops "push fatigue" (approving a request one did not start).

Decoys share no word with the right phrase, so the three choices differ at a
glance; all three are drawn the same way, independently, so nothing in a
decoy tells it from the right one. 256 words, three distinct per phrase:
about 16 million phrases. The phrase is not a secret from whoever started
the request (their browser shows it): it only proves that the user looked at
*that* browser.
"""

from __future__ import annotations

import secrets

WORDS: tuple[str, ...] = tuple("""
    acorn almond anchor apple apron arrow autumn badge bakery balloon bamboo banana banjo barrel basket beach beacon
    bean bear beaver bell berry bicycle biscuit bison blanket blossom boat bottle bounce bread breeze brick bridge
    broom bucket butter button cabbage cabin cactus camel candle canoe canyon carpet carrot castle cedar cello chalk
    cherry chess cider circle cliff clock cloud clover coast cobalt coconut comet copper coral cotton cradle crayon
    cricket crystal cupboard daisy desert diamond dolphin donkey dragon drum dune eagle easel echo elbow ember
    engine falcon feather fern fiddle field flame flute forest forge fossil fountain fox garden garlic ginger
    glacier globe goose grape gravel guitar hammer hammock harbor harp hazel helmet heron hill honey horizon igloo
    iris island ivory jacket jasmine jelly jigsaw juniper kayak kettle kite kiwi koala ladder lagoon lantern lemon
    lilac lime linen lizard llama lobster locket magnet mango maple marble meadow melon meteor mint mirror mitten
    moose mosaic mountain muffin napkin needle nest noodle nutmeg oasis ocean olive onion orbit orchid otter owl
    paddle palace panda paper parrot peach peanut pebble pencil pepper piano pickle pillow pine planet plum pocket
    pond poppy potato pumpkin puzzle quartz quilt rabbit radish rainbow raven ribbon river robin rocket saddle
    salmon sandal satin scarf shell shovel silver sketch sled slipper snail spider spoon spruce squash stamp star
    stone straw summer sunset swan teapot thimble thistle thunder tiger timber toast tomato topaz tower tractor
    trumpet tulip tunnel turtle umbrella valley velvet violin volcano wagon walnut walrus whale whistle willow
    window winter wizard wool yogurt zebra zipper
""".split())

CHOICES = 3
WORDS_PER_PHRASE = 3


def phrase(exclude: frozenset[str] = frozenset()) -> str:
    """Three distinct random words, none of them in `exclude`."""
    pool = [w for w in WORDS if w not in exclude]
    picked: list[str] = []
    while len(picked) < WORDS_PER_PHRASE:
        w = secrets.choice(pool)
        if w not in picked:
            picked.append(w)
    return " ".join(picked)


def choices(right: str) -> tuple[str, ...]:
    """The right phrase and two decoys, shuffled; no two share a word."""
    used = set(right.split())
    out = [right]
    while len(out) < CHOICES:
        p = phrase(frozenset(used))
        used.update(p.split())
        out.append(p)
    shuffled: list[str] = []
    while out:
        shuffled.append(out.pop(secrets.randbelow(len(out))))
    return tuple(shuffled)


def normalise(text: str) -> str:
    """How a pick is compared: case and spacing do not matter (a device may
    send what a person typed)."""
    return " ".join(text.lower().split())
