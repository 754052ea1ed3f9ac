"""Live view (issue 17): `hub` (a camera's live packets fanned out to viewers, on the event
loop), `webrtc` (aiortc: the pass-through track, WHEP answers, ICE host addresses), `fmp4`
(the MSE WebSocket's fragmented MP4, a PyAV remux on worker threads), `transcode` (H.265 to
reduced H.264, keyframe JPEGs; worker threads), `annexb` (NAL units, parameter sets, codecs
strings), `service` (`LiveService`: admission, modes, WHEP sessions, the audit). The routes
are `api.routes.live`. Imports go down: `ingest.tap` (frames), `config`, `storage` (audit)."""
