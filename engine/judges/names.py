"""Judge names: the one home of the strings that name judges in verdicts, caches and pages.

No imports, so every layer (pages included) can use them without pulling in a judge.
"""

KEYWORD = "keyword"
HARMBENCH = "harmbench"
HUMAN = "human"

# The order judges are shown in tables and pages.
JUDGE_ORDER = (KEYWORD, HARMBENCH, HUMAN)
