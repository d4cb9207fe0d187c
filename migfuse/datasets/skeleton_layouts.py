"""Skeleton graph layouts as data: which joints, which edges, which of iMiGUE's 137 points.

Torch-free and in `data_cache` so that exporters (`data export-pyskl`) can select a layout's
joints without the model code; `migfuse.backbones.graphs` re-exports these names and
builds the spatial adjacency from them.

A `Layout` lists its nodes, its inward edges `(child, parent)` (pointing towards the centre), its
centre and its bone pairs `(child, parent)`. Layouts read from iMiGUE's 137 OpenPose keypoints
(BODY_25 0-24, face 25-94, left hand 95-115, right hand 116-136) also say which of the 137 points
each node is (`source`).

Layouts:
  imigue       55 nodes: BODY_25 upper body (nose, neck, shoulders, elbows, wrists, mid-hip, eyes, ears)
               + both 21-point OpenPose hands; hand wrist (hand point 0) joined to the body wrist.
  openpose22   22 nodes of the MiGA baselines (pyskl `openpose22`): BODY_25 0-7, eyes, ears,
               5 right fingertips on the right wrist, 5 left fingertips on the left wrist.
  openpose-18  Kinetics / OpenPose COCO-18 (2s-AGCN graph/kinetics.py); read from BODY_25.
  ntu-25       NTU RGB+D as 2s-AGCN graph/ntu_rgb_d.py builds it.
  nturgb+d     NTU RGB+D as mmaction2 graph.py builds it (hand tips hang off the wrists).
  coco-17      COCO-17 as mmaction2 graph.py builds it; read from BODY_25 (to start from mmaction2's
               coco checkpoints).
"""
from __future__ import annotations

from dataclasses import dataclass

from migfuse.errors import UserError

# Offsets of the OpenPose parts inside the 137 keypoints of iMiGUE.
BODY, FACE, LEFT_HAND, RIGHT_HAND = 0, 25, 95, 116
NUM_OPENPOSE_POINTS = 137


@dataclass(frozen=True)
class Layout:
    """A skeleton graph: node names, inward edges (child, parent), centre, bone pairs (child, parent)."""

    name: str
    nodes: tuple[str, ...]
    inward: tuple[tuple[int, int], ...]
    center: int
    bone_pairs: tuple[tuple[int, int], ...]
    #: for layouts read from iMiGUE's 137 OpenPose points: the point index of each node, else None
    source: tuple[int, ...] | None = None
    description: str = ""

    @property
    def num_node(self) -> int:
        return len(self.nodes)

    @property
    def outward(self) -> tuple[tuple[int, int], ...]:
        return tuple((j, i) for i, j in self.inward)


def _tree_bones(inward: tuple[tuple[int, int], ...], center: int) -> tuple[tuple[int, int], ...]:
    """Bone pairs from a tree: every edge (child, parent) plus the all-zero root bone (centre, centre)."""
    pairs = dict(inward)
    pairs[center] = center
    return tuple((c, pairs[c]) for c in sorted(pairs))


# ---------------------------------------------------------------------------------------------
# Layouts read from iMiGUE's OpenPose output
# ---------------------------------------------------------------------------------------------
# BODY_25 points kept for the upper body (legs are under the press-conference table). Mid-hip is kept
# as the trunk's lower end: it is often visible and anchors the shoulders' up/down motion.
_BODY_POINTS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 15, 16, 17, 18)
_BODY_NAMES = ("nose", "neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow", "l_wrist",
               "mid_hip", "r_eye", "l_eye", "r_ear", "l_ear")
# Body edges (child, parent) in BODY_25 point numbers, towards the neck.
_BODY_EDGES = ((0, 1), (2, 1), (3, 2), (4, 3), (5, 1), (6, 5), (7, 6), (8, 1), (15, 0), (16, 0), (17, 15),
               (18, 16))
# OpenPose hand: point 0 is the wrist; each finger is a chain of 4 points from the wrist.
_HAND_EDGES = tuple((k, 0 if k % 4 == 1 else k - 1) for k in range(1, 21))
_FINGER_NAMES = ("thumb", "index", "middle", "ring", "little")


def _hand_names(side: str) -> tuple[str, ...]:
    return (f"{side}_hand_wrist",) + tuple(f"{side}_{_FINGER_NAMES[(k - 1) // 4]}_{(k - 1) % 4 + 1}"
                                             for k in range(1, 21))


def _imigue() -> Layout:
    source = _BODY_POINTS + tuple(range(LEFT_HAND, LEFT_HAND + 21)) + tuple(range(RIGHT_HAND, RIGHT_HAND + 21))
    node_of = {p: n for n, p in enumerate(source)}
    inward = [(node_of[c], node_of[p]) for c, p in _BODY_EDGES]
    for hand, body_wrist in ((LEFT_HAND, 7), (RIGHT_HAND, 4)):
        inward.append((node_of[hand], node_of[body_wrist]))  # hand wrist -> body wrist
        inward += [(node_of[hand + c], node_of[hand + p]) for c, p in _HAND_EDGES]
    inward_t = tuple(inward)
    center = node_of[1]
    return Layout(
        name="imigue", nodes=_BODY_NAMES + _hand_names("l") + _hand_names("r"), inward=inward_t,
        center=center, bone_pairs=_tree_bones(inward_t, center), source=source,
        description="iMiGUE 55: BODY_25 upper body (0-8, 15-18) + left hand (95-115) + right hand "
                    "(116-136); hand wrists joined to body wrists; centre neck",
    )


def _openpose22() -> Layout:
    tips = (4, 8, 12, 16, 20)
    source = (0, 1, 2, 3, 4, 5, 6, 7, 15, 16, 17, 18) + tuple(RIGHT_HAND + t for t in tips) \
        + tuple(LEFT_HAND + t for t in tips)
    names = ("nose", "neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow", "l_wrist", "r_eye",
             "l_eye", "r_ear", "l_ear") + tuple(f"r_{f}_tip" for f in _FINGER_NAMES) \
        + tuple(f"l_{f}_tip" for f in _FINGER_NAMES)
    # pyskl writes these edges parent-first; here they point towards the neck like every other layout.
    inward = ((0, 1), (2, 1), (3, 2), (4, 3), (5, 1), (6, 5), (7, 6), (8, 0), (10, 8), (9, 0), (11, 9)) \
        + tuple((k, 4) for k in range(12, 17)) + tuple((k, 7) for k in range(17, 22))
    return Layout(
        name="openpose22", nodes=names, inward=inward, center=1, bone_pairs=_tree_bones(inward, 1),
        source=source,
        description="MiGA baseline 22: BODY_25 0-7, eyes/ears 15-18, right fingertips (120,124,128,132,136) "
                    "on the right wrist, left fingertips (99,103,107,111,115) on the left wrist; centre neck",
    )


def _openpose18() -> Layout:
    names = ("nose", "neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow", "l_wrist", "r_hip",
             "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "r_eye", "l_eye", "r_ear", "l_ear")
    inward = ((4, 3), (3, 2), (7, 6), (6, 5), (13, 12), (12, 11), (10, 9), (9, 8), (11, 5), (8, 2), (5, 1),
              (2, 1), (0, 1), (15, 0), (14, 0), (17, 15), (16, 14))
    # gen_bone_data.py roots the Kinetics bones at the nose (1 -> 0), unlike the graph (centre neck).
    bones = ((0, 0), (1, 0), (2, 1), (3, 2), (4, 3), (5, 1), (6, 5), (7, 6), (8, 2), (9, 8), (10, 9), (11, 5),
             (12, 11), (13, 12), (14, 0), (15, 0), (16, 14), (17, 15))
    # OpenPose-18 is BODY_25 without mid-hip, toes and heels.
    source = (0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18)
    return Layout(name="openpose-18", nodes=names, inward=inward, center=1, bone_pairs=bones, source=source,
                  description="Kinetics / OpenPose-18 (2s-AGCN graph/kinetics.py, bones from gen_bone_data.py); "
                              "read from BODY_25 0-7, 9-18")


_NTU_NAMES = ("spine_base", "spine_mid", "neck", "head", "l_shoulder", "l_elbow", "l_wrist", "l_hand",
              "r_shoulder", "r_elbow", "r_wrist", "r_hand", "l_hip", "l_knee", "l_ankle", "l_foot", "r_hip",
              "r_knee", "r_ankle", "r_foot", "spine_shoulder", "l_hand_tip", "l_thumb", "r_hand_tip",
              "r_thumb")
_NTU_COMMON = ((1, 2), (2, 21), (3, 21), (4, 3), (5, 21), (6, 5), (7, 6), (8, 7), (9, 21), (10, 9), (11, 10),
               (12, 11), (13, 1), (14, 13), (15, 14), (16, 15), (17, 1), (18, 17), (19, 18), (20, 19))


def _ntu25() -> Layout:
    one_based = _NTU_COMMON + ((22, 23), (23, 8), (24, 25), (25, 12))
    inward = tuple((i - 1, j - 1) for i, j in one_based)
    return Layout(name="ntu-25", nodes=_NTU_NAMES, inward=inward, center=20, bone_pairs=_tree_bones(inward, 20),
                  description="NTU RGB+D 25 (2s-AGCN graph/ntu_rgb_d.py; bones as gen_bone_data.py ntu pairs)")


def _nturgbd_mmaction() -> Layout:
    one_based = _NTU_COMMON + ((22, 8), (23, 8), (24, 12), (25, 12))
    inward = tuple((i - 1, j - 1) for i, j in one_based)
    return Layout(name="nturgb+d", nodes=_NTU_NAMES, inward=inward, center=20,
                  bone_pairs=_tree_bones(inward, 20),
                  description="NTU RGB+D 25 as mmaction2 graph.py 'nturgb+d' (hand tips on the hands)")


def _coco17() -> Layout:
    names = ("nose", "l_eye", "r_eye", "l_ear", "r_ear", "l_shoulder", "r_shoulder", "l_elbow", "r_elbow",
             "l_wrist", "r_wrist", "l_hip", "r_hip", "l_knee", "r_knee", "l_ankle", "r_ankle")
    inward = ((15, 13), (13, 11), (16, 14), (14, 12), (11, 5), (12, 6), (9, 7), (7, 5), (10, 8), (8, 6), (5, 0),
              (6, 0), (1, 0), (3, 1), (2, 0), (4, 2))
    # The COCO-17 points are BODY_25 points in another order (no neck).
    source = (0, 16, 15, 18, 17, 5, 2, 6, 3, 7, 4, 12, 9, 13, 10, 14, 11)
    return Layout(name="coco-17", nodes=names, inward=inward, center=0, bone_pairs=_tree_bones(inward, 0),
                  source=source,
                  description="COCO-17 as mmaction2 graph.py 'coco' (bones along the graph tree); read from "
                              "BODY_25 (for starting from mmaction2 coco checkpoints)")


_BUILDERS = {"imigue": _imigue, "openpose22": _openpose22, "openpose-18": _openpose18, "ntu-25": _ntu25,
             "nturgb+d": _nturgbd_mmaction, "coco-17": _coco17}
# Names the original code bases use for the same layouts.
_ALIASES = {"openpose": "openpose-18", "kinetics": "openpose-18", "coco": "coco-17", "ntu": "ntu-25"}
# Joint count -> layout, to recognise a checkpoint's layout from its shapes (first match wins).
LAYOUT_BY_JOINTS = {55: "imigue", 22: "openpose22", 18: "openpose-18", 25: "ntu-25", 17: "coco-17"}


def list_layouts() -> list[str]:
    return list(_BUILDERS)


def get_layout(name: str) -> Layout:
    """The layout called `name` (or an alias such as 'coco', 'kinetics'); UserError when unknown."""
    key = _ALIASES.get(name, name)
    if key not in _BUILDERS:
        raise UserError(f"unknown skeleton layout '{name}': choose one of {', '.join(list_layouts())}")
    return _BUILDERS[key]()
