"""The 32 micro-gesture classes of iMiGUE and the fixed split lists of the protocol and challenges.

Sources: the official iMiGUE repository (github.com/linuxsino/iMiGUE): `labels_20200831.csv` and
"evaluation protocol.pdf" (cross-subject subjects, emotion videos); the MiGA 2023 Track-1 label text
(VUT-HFUT/MiGA2023_Track1 `tools/glove/english_label.txt`) for the class names; the MiGA 2023/2025
Track-1 clip lists (12,893 train / 777 validation / 4,562 test, as in momiji-bit/MM-Gesture
`dataset/iMiGUE_*_clips_list.txt`) for the MiGA split. Everything here is a constant of the dataset;
nothing is computed from files.

Class indices: raw annotation classes 1..31 map to index raw-1, raw 99 ("illustrative", non-MG)
maps to index 31. There is no raw class 32.
"""
from __future__ import annotations

NUM_CLASSES = 32

#: Short class names, index 0..31 (MiGA 2023 Track-1 label text).
CLASS_NAMES: list[str] = [
    "turtle neck", "deep breath", "touch hat", "touch face", "touch forehead", "cover face",
    "rub eyes", "touch other face part", "touch ears", "bite nails", "touch chin", "touch neck",
    "play hair", "adjust tie", "touch chest", "scratch back", "fold arm", "tidy sleeve",
    "put arm back", "move torso", "sit straight", "scratch arm", "rub hand", "cross finger",
    "minaret hand", "play things", "withdraw arms", "head up", "bit lip", "arm akimbo",
    "shake shoulder", "illustrative",
]

#: Raw class id of the non-MG "illustrative gesture" class.
RAW_ILLUSTRATIVE = 99


def raw_to_index(raw: int) -> int:
    """Map a raw annotation class (1..31 or 99) to the class index 0..31."""
    raw = int(raw)
    if raw == RAW_ILLUSTRATIVE:
        return NUM_CLASSES - 1
    if 1 <= raw <= NUM_CLASSES - 1:
        return raw - 1
    raise ValueError(f"raw class {raw} is not an iMiGUE class (1..31 or 99)")


def index_to_raw(index: int) -> int:
    """Map a class index 0..31 back to the raw annotation class (1..31 or 99)."""
    index = int(index)
    if index == NUM_CLASSES - 1:
        return RAW_ILLUSTRATIVE
    if 0 <= index < NUM_CLASSES - 1:
        return index + 1
    raise ValueError(f"class index {index} is outside 0..31")


# ----- cross-subject (CS) micro-gesture protocol --------------------------------------------------

#: Training subjects of the official cross-subject protocol; every other subject (1..72) is test.
CS_TRAIN_SUBJECTS: frozenset[int] = frozenset({
    2, 4, 5, 6, 9, 10, 12, 13, 14, 15, 17, 18, 20, 21, 22, 23, 25, 28, 29, 30, 31, 35, 36, 38, 39,
    41, 42, 43, 44, 46, 47, 48, 52, 53, 59, 61, 62,
})


def split_cs(subject: int) -> str:
    """Cross-subject split of a subject id: "train" or "test"."""
    return "train" if int(subject) in CS_TRAIN_SUBJECTS else "test"


# ----- MiGA 2023/2025 Track-1 split --------------------------------------------------------------

#: Validation videos of the MiGA challenges (all of training subjects).
MIGA_VALIDATION_VIDEOS: frozenset[int] = frozenset({1, 2, 3, 4, 6, 7, 8, 9, 10, 11})
#: Training-subject videos the challenges left out (265 clips; 347/348 have empty skeletons).
MIGA_EXCLUDED_VIDEOS: frozenset[int] = frozenset({218, 319, 347, 348})
#: Clips of test subjects that the challenge files do not list ("{vid4}_{k}").
MIGA_EXCLUDED_CLIPS: frozenset[str] = frozenset({"0453_32"})


def split_miga(video_id: int, k: int, subject: int) -> str:
    """MiGA split of clip k (0-based) of a video: "train", "validation", "test" or "" (not listed)."""
    video_id = int(video_id)
    if f"{video_id:04d}_{k}" in MIGA_EXCLUDED_CLIPS:
        return ""
    if split_cs(subject) == "test":
        return "test"
    if video_id in MIGA_VALIDATION_VIDEOS:
        return "validation"
    if video_id in MIGA_EXCLUDED_VIDEOS:
        return ""
    return "train"


# ----- emotion (win/lose) protocol, per video ----------------------------------------------------

EMOTION_CLASSES: list[str] = ["Lose", "Win"]  # index 1 = Win = positive

EMOTION_TRAIN_VIDEOS: frozenset[int] = frozenset({
    1, 7, 8, 11, 26, 27, 46, 47, 48, 53, 55, 57, 63, 66, 67, 74, 77, 84, 85, 86, 91, 96, 102, 103,
    104, 105, 106, 108, 109, 112, 114, 117, 124, 132, 134, 140, 148, 157, 161, 162, 163, 164, 167,
    169, 170, 172, 176, 186, 196, 216, 233, 236, 237, 239, 240, 241, 242, 243, 249, 252, 266, 290,
    297, 300, 306, 310, 314, 318, 319, 320, 324, 334, 339, 359, 360, 365, 369, 377, 381, 385, 392,
    402, 407, 410, 411, 413, 414, 415, 420, 429, 433, 435, 436, 440, 441, 445, 448, 449, 450, 451,
    452, 453,
})
EMOTION_TEST_VIDEOS: frozenset[int] = frozenset({
    9, 10, 12, 16, 28, 35, 43, 49, 50, 51, 52, 54, 56, 60, 71, 72, 83, 89, 95, 100, 107, 110, 111,
    121, 131, 136, 144, 145, 165, 166, 168, 171, 174, 179, 185, 191, 193, 212, 220, 223, 230, 231,
    232, 234, 235, 238, 244, 246, 254, 258, 262, 263, 268, 270, 276, 280, 282, 303, 304, 311, 312,
    313, 315, 316, 317, 322, 323, 325, 327, 328, 329, 333, 337, 341, 343, 344, 363, 374, 400, 401,
    403, 404, 405, 406, 408, 416, 417, 419, 421, 428, 430, 431, 437, 438, 439, 442, 443, 444, 446,
    447,
})


def split_emotion(video_id: int) -> str:
    """Emotion split of a video: "train", "test" or "" (not in the protocol)."""
    video_id = int(video_id)
    if video_id in EMOTION_TRAIN_VIDEOS:
        return "train"
    if video_id in EMOTION_TEST_VIDEOS:
        return "test"
    return ""


#: spellings of the win_or_lose column accepted (compared case-insensitively, spaces stripped)
WIN_LOSE_SPELLINGS: dict[str, str] = {"win": "Win", "won": "Win", "w": "Win",
                                      "lose": "Lose", "lost": "Lose", "loss": "Lose", "l": "Lose"}


def normalise_win_lose(text: str) -> str | None:
    """"Win" / "Lose" for a known spelling (`WIN_LOSE_SPELLINGS`), "" for an empty cell, None otherwise."""
    key = (text or "").strip().lower()
    if not key:
        return ""
    return WIN_LOSE_SPELLINGS.get(key)


def emotion_label(win_lose: str) -> int | None:
    """Emotion class index of a "Win"/"Lose" value (Win = 1); None when unknown."""
    return {"Lose": 0, "Win": 1}.get(win_lose.strip().capitalize()) if win_lose else None
