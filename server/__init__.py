"""The app's job layer, without Gradio: between `app.py` (the page and the API) and the engine (`anyv2v`) and
the first-frame editors (`editors`). One module per concern:

- `settings`: server settings and the login from ANYV2V_* environment variables, the model-source check
- `checks`: request values to a validated EditConfig, upload checks, with their user messages
- `presets`: presets by intent and inversion step counts that serve the sampling steps
- `messages`: one-line user errors, durations, clip and edit summaries
- `clips`: the prepared-clip cache
- `jobs`: the GPU slot, GPU jobs, progress and cancel
- `retention`: deleting old outputs and stale partial files
- `editor_params`: the API's editor parameters (the union of every editor's inputs)
- `examples`: the page's examples
- `app_outputs`: the app's own output subfolder, the names it owns, files published whole
- `image_uploads`: uploaded images decoded by the app (JPEG modes, EXIF orientation), not by Gradio
- `step_timing`: measured step times per device, stage, video model and size, for the page's estimates
- `session_latest`: per session, the latest of a burst of requests wins
- `visitor_jobs`: what became of a browser's video edit, for the page it reloads
- `login_throttle`: failed logins slowed down per client
- `region_tools`: the region brush size and a target box from two clicks
- `service`: `EditService`, the one object the app holds
"""
