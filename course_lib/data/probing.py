"""Labelled probing tasks written for the course, from shallow to deep.

Each task is a list of (text, label, word type): the probe reads the residual stream at the
text's last token. Every word a task varies is a single token (a test checks it), so no label can
be read off "the last token is a word fragment". Word types let a control task (Hewitt & Liang
2019) give each type a random label.

* capitalised (surface): is the last word written with a capital letter?
* subject_number (syntax): is the subject of "The N1 near the N2" plural? Read at N2, which often
  has the other number (an "attractor"), so the answer is not in the last token itself.
* in_europe (knowledge): is the city named earlier in Europe? Read at the final "in", so the
  fact must be recalled and moved to that position.
"""

from __future__ import annotations

# Every word is a single SmolLM2 token after a space, both lowercase and capitalised (a test checks
# it): a probe must not be able to read "the last token is a word fragment" instead of the case.
WORDS_FOR_CASE = (
    "apple", "river", "garden", "window", "silver", "forest", "button", "mirror", "pocket", "rabbit",
    "tunnel", "pepper", "castle", "engine", "planet", "basket", "dragon", "harbor", "table", "chair",
    "house", "door", "horse", "bread", "stone", "paper", "glass", "bridge", "island", "mountain",
    "village", "church", "camera", "guitar", "piano", "kitchen", "tower", "cheese", "lemon", "tiger",
)
CASE_TEMPLATES = ("The next word is {}", "On the sign it said {}")

SINGULAR_PLURAL = (
    ("key", "keys"), ("dog", "dogs"), ("author", "authors"), ("picture", "pictures"), ("teacher", "teachers"),
    ("bottle", "bottles"), ("friend", "friends"), ("house", "houses"), ("road", "roads"), ("letter", "letters"),
    ("student", "students"), ("painting", "paintings"), ("window", "windows"), ("doctor", "doctors"),
)
ATTRACTORS = (("cabinet", "cabinets"), ("table", "tables"), ("garden", "gardens"), ("village", "villages"), ("box", "boxes"))

EUROPEAN_CITIES = (
    "Paris", "London", "Berlin", "Madrid", "Rome", "Vienna", "Prague", "Warsaw", "Dublin", "Lisbon",
    "Athens", "Oslo", "Stockholm", "Budapest", "Amsterdam", "Brussels", "Helsinki", "Copenhagen", "Munich", "Milan",
)
OTHER_CITIES = (
    "Tokyo", "Beijing", "Delhi", "Cairo", "Sydney", "Chicago", "Boston", "Toronto", "Dubai", "Nairobi",
    "Lima", "Havana", "Seoul", "Tehran", "Santiago", "Manila", "Mumbai", "Shanghai", "Mexico", "Dallas",
)
# Every city is a single token after a space, so neither label is marked by fragmentation.
CITY_TEMPLATES = ("The city of {} is in", "I flew to {}, which is in", "The museum in {} is located in")


def capitalised_task() -> list[tuple[str, int, str]]:
    """Surface property: the last word is capitalised (1) or not (0)."""
    data = []
    for word in WORDS_FOR_CASE:
        for template in CASE_TEMPLATES:
            data.append((template.format(word), 0, word))
            data.append((template.format(word.capitalize()), 1, word.capitalize()))
    return data


def subject_number_task() -> list[tuple[str, int, str]]:
    """Syntax: the subject of "The N1 of the N2" is plural (1) or singular (0); read at N2."""
    data = []
    for singular, plural in SINGULAR_PLURAL:
        for attractor_singular, attractor_plural in ATTRACTORS:
            for subject, label in ((singular, 0), (plural, 1)):
                for attractor in (attractor_singular, attractor_plural):
                    data.append((f"The {subject} near the {attractor}", label, subject))
    return data


def in_europe_task() -> list[tuple[str, int, str]]:
    """Knowledge: the city named earlier is in Europe (1) or elsewhere (0); read at the last word
    "in", so the fact must be recalled and moved there by attention."""
    data = []
    for template in CITY_TEMPLATES:
        data += [(template.format(c), 1, c) for c in EUROPEAN_CITIES]
        data += [(template.format(c), 0, c) for c in OTHER_CITIES]
    return data


TASKS = {"capitalised": capitalised_task, "subject_number": subject_number_task, "in_europe": in_europe_task}
