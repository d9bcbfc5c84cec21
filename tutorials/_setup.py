"""What every tutorial shares: fast mode, optional matplotlib, and saving figures.

    MINILLM_TUTORIAL_FAST=1         shrink sizes so a tutorial runs in seconds (CI does this)
    MINILLM_TUTORIAL_FIGURES=DIR    save the figures there (otherwise they are only shown in
                                    a notebook, and closed in a script)
"""
import os

FAST = os.environ.get("MINILLM_TUTORIAL_FAST") == "1"
FIG_DIR = os.environ.get("MINILLM_TUTORIAL_FIGURES")


def _in_notebook():
    try:
        get_ipython  # noqa: F821  (defined inside Jupyter)
        return True
    except NameError:
        return False


try:
    import matplotlib
    if not _in_notebook():
        matplotlib.use("Agg")  # a script draws off screen; a notebook keeps its inline backend
    import matplotlib.pyplot as plt
except ImportError:  # matplotlib is optional (the `extras` extra): the tutorials skip figures
    plt = None


def finish(fig, name):
    """Save a figure if MINILLM_TUTORIAL_FIGURES names a folder; in a script, close it."""
    if FIG_DIR:
        os.makedirs(FIG_DIR, exist_ok=True)
        fig.savefig(os.path.join(FIG_DIR, name), dpi=120, bbox_inches="tight")
    if not _in_notebook():
        plt.close(fig)


def rejected(check, answer, errors=(AssertionError,)):
    """True if the exercise check `check` rejects `answer` (the checks are not rubber stamps)."""
    try:
        check(answer)
    except errors:
        return True
    return False


def assert_all_rejected(wrong_answers, errors=(AssertionError,)):
    """Show that every (check, plausible wrong answer) pair is rejected by its check."""
    for check, answer in wrong_answers:
        assert rejected(check, answer, errors), f"{check.__name__} accepted a wrong answer"
    print(f"{len(wrong_answers)} wrong answers, {len(wrong_answers)} rejected")
