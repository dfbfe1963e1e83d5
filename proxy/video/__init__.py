"""Video: probe a source with ffprobe and make its poster, thumbnail and HLS renditions with ffmpeg.

The public names are in :mod:`proxy.video.making`; the pure rules in :mod:`proxy.rules.video`.
"""
