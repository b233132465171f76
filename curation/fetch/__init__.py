"""Fetch stage: a clip's source into `OUT/raw/<clip_id>.mp4`.

`clip` (local files, direct URLs, yt-dlp pages; re-encode only what must be), `http` (one ranged GET
answers what a plain web server supports), `youtube` (yt-dlp's Python API), `errors` (tool failures ->
stable error kinds), `control` (per-host limits, global stop, retry-failed across a cluster), `mirror` (a
SOURCE folder or tar / tar.gz archives of a community mirror).
"""
