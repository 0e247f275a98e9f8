"""Stand-in of the parts of modules/sd_models.py the adapter reads."""

import hashlib
import os

checkpoints_list = {}


class CheckpointInfo:
    def __init__(self, filename):
        self.filename = filename
        self.name = os.path.basename(filename)
        self.model_name = os.path.splitext(self.name)[0]
        self.sha256 = None
        self.shorthash = None
        self.title = self.name

    def register(self):
        checkpoints_list[self.title] = self

    def calculate_shorthash(self):
        with open(self.filename, "rb") as f:
            self.sha256 = hashlib.sha256(f.read()).hexdigest()
        self.shorthash = self.sha256[0:10]
        self.title = f"{self.name} [{self.shorthash}]"
        return self.shorthash


def get_closet_checkpoint_match(search_string):
    """As the webui's (sic): the checkpoint whose title holds the string, shortest title first."""
    if not search_string:
        return None
    found = sorted(
        [i for i in checkpoints_list.values() if search_string in i.title], key=lambda i: len(i.title)
    )
    return found[0] if found else None
