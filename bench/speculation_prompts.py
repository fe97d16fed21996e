"""The prompts of bench/speculation.py: input-grounded ones (summarise a given passage,
edit a given code snippet, answer quoting a given text; five each) and open chat."""

from __future__ import annotations

PASSAGES = [
    "The lighthouse on Gull Point was built in 1871 to guide fishing boats past the reef. For almost a "
    "century its keeper lived in the small stone house beside it, lighting the lamp every evening and "
    "winding the clockwork that turned the lens. In 1962 the light was automated, the keeper moved to the "
    "village, and the house became a museum about the fishermen who had depended on the light.",
    "Honeybees communicate the location of flowers with a waggle dance. A forager returning to the hive "
    "walks in a figure-eight pattern, and the angle of the straight part of the dance relative to vertical "
    "tells other bees the direction of the food relative to the sun. The length of the waggle run tells "
    "them how far away the flowers are.",
    "The city council voted on Tuesday to turn the old railway yard into a public park. The plan includes "
    "a playground, a community garden, and a path for bicycles that will connect the park to the river. "
    "Work will begin next spring and should be finished within two years, paid for by a grant from the state.",
    "Bread rises because yeast eats the sugars in the flour and releases carbon dioxide gas. Kneading the "
    "dough builds a network of gluten that traps the gas in tiny bubbles. When the bread is baked, the heat "
    "kills the yeast, the bubbles expand, and the gluten sets into the soft structure of the loaf.",
    "Maria started running when she was forty. At first she could only run for two minutes before she had "
    "to walk, but she kept going three times a week. After one year she finished her first ten kilometre "
    "race, and after three years she ran a full marathon in the city where she was born.",
]

SNIPPETS = [
    ("Rename the variable x to total in this code and show the whole code:",
     "def sum_list(numbers):\n    x = 0\n    for n in numbers:\n        x = x + n\n    return x\n"),
    ("Add a docstring to this function and show the whole function:",
     "def is_even(number):\n    return number % 2 == 0\n"),
    ("Fix the bug in this code and show the whole function:",
     "def average(values):\n    total = 0\n    for value in values:\n        total += value\n"
     "    return total / len(value)\n"),
    ("Change this loop to count down from 10 to 1 and show the whole code:",
     "for i in range(1, 11):\n    print(i)\nprint(\"done\")\n"),
    ("Add type hints to this function and show the whole function:",
     "def greet(name, times):\n    for _ in range(times):\n        print(\"Hello, \" + name)\n"),
]

QUOTES = [
    (PASSAGES[0], "When was the light automated? Answer by quoting the sentence from the text."),
    (PASSAGES[1], "How do bees tell the distance to the flowers? Quote the sentence from the text."),
    (PASSAGES[2], "What will the park include? Quote the text exactly."),
    (PASSAGES[3], "What happens when the bread is baked? Answer with a quote from the text."),
    (PASSAGES[4], "What did Maria do after one year? Quote the sentence from the text."),
]

OPEN_CHAT = [
    "Tell me something interesting about cats.",
    "Give me three tips for sleeping better.",
    "Write a short poem about autumn.",
    "What is the difference between a virus and a bacterium?",
    "How can I start learning to play the guitar?",
]


def prompt_sets() -> dict[str, list[list[dict[str, str]]]]:
    """Category -> chat messages."""
    def user(text: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": text}]

    return {
        "summarize": [user(f"Summarize this passage in two sentences:\n\n{passage}") for passage in PASSAGES],
        "code_edit": [user(f"{instruction}\n\n{code}") for instruction, code in SNIPPETS],
        "quote": [user(f"{passage}\n\n{question}") for passage, question in QUOTES],
        "open_chat": [user(text) for text in OPEN_CHAT],
    }
