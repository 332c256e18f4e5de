"""When a detector's costly search (BlazeFace's finer tiles) runs on a video's face-free frames.

On a video, a frame where the cheap search (BlazeFace's level-0 squares) finds no face gets the
finer tiles only when a face was found, at any level, on one of the `recent` frames before it,
or when its position in the stream is a multiple of `every`: a face that leaves and comes back
is searched for at once, a long face-free stretch costs about a tenth of the full search, and a
small face that appears in a face-free stretch is found within `every` frames (then followed on
every frame). Independent images are never gated. `FineGate` holds the state across calls.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

RECENT_FRAMES = 30  # a face this many frames ago keeps the full search on (1 s at 30 fps)
FINE_EVERY = 10  # otherwise the full search runs on one face-free frame in this many


@dataclass
class FineGate:
    recent: int = RECENT_FRAMES
    every: int = FINE_EVERY
    position: int = 0  # stream position of the next frame the detector sees
    last_face: Optional[int] = None  # stream position of the last frame with a face
    searched: int = 0  # face-free frames (at the cheap level) that got the full search
    skipped: int = 0  # those that did not

    def allows(self, position: int, last_face: Optional[int]) -> bool:
        near = last_face is not None and 0 < position - last_face <= self.recent
        return near or position % self.every == 0

    def advance(self, n: int, faces: list[bool], searched: int, cheap_empty: int) -> None:
        """After a batch of n frames (faces: which had one at any level; of the cheap_empty
        frames where the cheap search found none, `searched` got the full search)."""
        hits = [self.position + i for i, f in enumerate(faces) if f]
        if hits:
            self.last_face = hits[-1]
        self.searched += searched
        self.skipped += cheap_empty - searched
        self.position += n

    def last_face_before(self, position: int, faces: list[bool]) -> Optional[int]:
        """The last stream position before `position` with a face (this batch's faces: list
        indexed from self.position)."""
        for i in range(position - self.position - 1, -1, -1):
            if faces[i]:
                return self.position + i
        return self.last_face
