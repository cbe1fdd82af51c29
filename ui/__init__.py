"""The Gradio side of the app that is not page layout (`app.py` lays out the page and wires its events):

- `widgets`: errors as one readable line, the checked image upload, the progress adapter, editor inputs as widgets
- `clip_handlers`: step 1 (preparing the clip, the time estimate) and the examples
- `frame_handlers`: step 2 (running an editor, picking a candidate, clicks on the first frame)
- `edit_handlers`: step 3 (the settings' consistency, the video edit, cancel) and visitors who leave
- `api`: the public API endpoints /edit_first_frame and /edit_video with their signatures

`server` (the job layer) and `anyv2v` (the engine) never import this package.
"""
