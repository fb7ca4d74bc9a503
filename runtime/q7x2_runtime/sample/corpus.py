"""The text the sample is built from: a short original story plus generated drill tasks.

Everything here is written for this project (no third-party text) and kept in a Python module
rather than a data file so it ships with every install of the package. The drill tasks are
regular enough that a tiny model visibly learns them within a few dozen iterations, which is
what makes "the loss falls" a meaningful check.
"""

from __future__ import annotations

import random

# An original short story, one sentence per line.
STORY = """\
The lighthouse stood on a low grey rock at the mouth of the harbour.
Every evening the keeper climbed one hundred and twelve steps to light the lamp.
She carried a brass can of oil in one hand and a lantern in the other.
The wind came from the west most nights and smelled of salt and seaweed.
Fishing boats waited for the beam before they turned toward the quay.
The keeper wrote the weather in a thick book with a green cover.
On calm nights she counted the boats as they came home, one by one.
On stormy nights she stayed awake and listened to the waves strike the rock.
A young boy from the village brought her bread and letters twice a week.
He asked her once why the light never went out.
She told him that a light is only useful if people can trust it.
In spring the gulls built nests on the narrow ledges below the gallery.
In summer travellers rowed out to see the great glass lens.
The lens was made of many rings of glass that bent the light into a single beam.
The keeper polished every ring with a soft cloth each morning.
In autumn the fog rolled in from the sea and hid the harbour for days.
Then she rang the fog bell every minute until the air was clear again.
In winter ice formed on the railings and the steps grew slippery.
She tied a rope along the wall so that she would not fall.
One night a small boat lost its rudder near the northern reef.
The keeper saw a red flare rise above the dark water.
She turned the lamp a little and signalled to the harbour master.
The harbour master sent two rowers with a long rope and a lantern.
They reached the small boat before the tide carried it onto the reef.
The next morning the whole village came to thank the keeper.
She only smiled and said that the lamp had done the work.
Years later the boy became a keeper himself on another coast.
He kept a thick book with a green cover and wrote the weather every day.
When children asked him why the light never went out, he knew the answer.
A light is only useful if people can trust it, he told them.
The river runs from the hills to the sea through a wide green valley.
Farmers along the river grow wheat, barley and apples.
A stone bridge with seven arches crosses the river near the old mill.
The mill wheel turns slowly and grinds the grain into flour.
The miller opens the gate at dawn and closes it at dusk.
Children throw sticks from the bridge and race to see which one comes out first.
Herons stand in the shallow water and wait for fish.
In the evening the valley fills with the sound of crickets.
A market is held in the square every Saturday morning.
People sell cheese, honey, eggs, wool and baskets woven from reeds.
The baker arrives first and the cheese seller arrives last.
By noon the square is empty again and the pigeons return.
The school stands at the top of the hill beside a tall oak tree.
The teacher rings a bell at eight o'clock to call the children inside.
They learn to read, to write, to count and to draw maps of the valley.
On the wall hangs a map that shows the river, the bridge and the lighthouse.
After school the children walk home along the river path.
Some of them stop at the mill to watch the wheel turn.
The miller gives them a handful of warm bread if they help to carry sacks.
At night the lighthouse beam sweeps across the valley far in the distance.
"""

ANIMALS = [
    ("cat", "meows"), ("dog", "barks"), ("cow", "moos"), ("sheep", "bleats"),
    ("horse", "neighs"), ("duck", "quacks"), ("owl", "hoots"), ("lion", "roars"),
    ("frog", "croaks"), ("pig", "grunts"), ("goose", "honks"), ("bee", "buzzes"),
]

COLOURS = [
    ("grass", "green"), ("the sky on a clear day", "blue"), ("snow", "white"),
    ("coal", "black"), ("a ripe tomato", "red"), ("a lemon", "yellow"),
    ("an orange", "orange"), ("a plum", "purple"), ("milk", "white"), ("chocolate", "brown"),
]

NUMBER_WORDS = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen", "twenty",
]

_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n{output}"
)
_PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n{output}"
)

# Fixed so the row order never depends on anything but this file.
_SHUFFLE_SEED = 20240601


def story_sentences() -> list[str]:
    return [line for line in STORY.splitlines() if line.strip()]


def _rows_raw() -> list[tuple[str, str, str]]:
    """(instruction, input, output) triples, in a fixed generation order."""
    rows: list[tuple[str, str, str]] = []
    sents = story_sentences()
    for a, b in zip(sents, sents[1:]):
        rows.append(("Continue the story with the next sentence.", a, b))
    for s in sents:
        rows.append(("Repeat the sentence exactly.", s, s))
    for x in range(1, 11):
        for y in range(1, 11):
            rows.append((f"What is {x} plus {y}?", "", f"{x} plus {y} is {x + y}."))
    for start in range(1, 11):
        for length in (3, 5, 7):
            end = start + length - 1
            seq = ", ".join(str(i) for i in range(start, end + 1))
            rows.append((f"Count from {start} to {end}.", "", f"{seq}."))
    for n in range(len(NUMBER_WORDS)):
        rows.append(("Write the number in words.", str(n), f"{NUMBER_WORDS[n]}"))
    for animal, sound in ANIMALS:
        rows.append((f"What sound does a {animal} make?", "", f"A {animal} {sound}."))
        rows.append(("Name the animal that makes this sound.", sound, f"The {animal} {sound}."))
    for thing, colour in COLOURS:
        rows.append((f"What colour is {thing}?", "", f"The colour of {thing} is {colour}."))
    for s in sents[::2]:
        words = s.rstrip(".").split()
        rows.append(("How many words are in this sentence?", s, f"There are {len(words)} words."))
    return rows


def alpaca_rows() -> list[dict[str, str]]:
    """Alpaca-shaped rows (instruction, input, output, text), deterministically shuffled."""
    rows = _rows_raw()
    random.Random(_SHUFFLE_SEED).shuffle(rows)
    out = []
    for instruction, inp, output in rows:
        template = _PROMPT_WITH_INPUT if inp else _PROMPT_NO_INPUT
        text = template.format(instruction=instruction, input=inp, output=output)
        out.append({"instruction": instruction, "input": inp, "output": output, "text": text})
    return out


def tokenizer_training_text() -> list[str]:
    """What the sample tokenizer learns its merges from: every row's text plus the story."""
    return [STORY] + [r["text"] for r in alpaca_rows()]
