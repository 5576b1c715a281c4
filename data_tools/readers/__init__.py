"""Readers of users' face data; importing this package registers every reader format."""

from data_tools.readers import image_folder, recordio, verification_bin
from data_tools.readers.base import (
    CHANNEL_ORDER,
    FaceReader,
    FaceRecord,
    Unreadable,
    decode_rgb,
    detect_format,
    encode_jpeg,
    open_reader,
    reader_formats,
    register_reader,
)

__all__ = [
    "CHANNEL_ORDER",
    "FaceReader",
    "FaceRecord",
    "Unreadable",
    "decode_rgb",
    "detect_format",
    "encode_jpeg",
    "image_folder",
    "open_reader",
    "reader_formats",
    "recordio",
    "register_reader",
    "verification_bin",
]
