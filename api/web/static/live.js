/*
 * Live view in the browser (issue 17): window.NvrLive.attach(video, camera, opts).
 *
 *   opts.mode   'auto' (default) | 'webrtc' | 'mse'
 *   opts.stream 'main' (default) | 'sub' (the camera's live_url substream, for the grid)
 *   opts.token  optional bearer token (pages use their session cookie instead)
 *   opts.audio  true: WebRTC asks for the camera's audio too (sent as Opus when the camera
 *               records audio; the handle's audio and video.dataset.liveAudio say 'opus' or
 *               'none'); the video starts muted. MSE is video only.
 *
 * Returns a Promise of {mode, close()} and sets video.dataset.liveMode to 'webrtc', 'mse',
 * 'transcode' (an H.265 camera shown as reduced H.264) or 'snapshot' (keyframe JPEGs shown as
 * the video's poster). 'auto' tries WHEP (POST /api/cameras/{name}/whep) first and falls back
 * to live fragmented MP4 over the WebSocket /api/cameras/{name}/live (Media Source
 * Extensions) by itself when WebRTC fails or no picture arrives within ~3 s. A refusal
 * (401, 403, 404) is not retried: the promise rejects with error.status set.
 *
 * Plain script, no build step, no inline code and no eval (strict Content-Security-Policy).
 * Unsafe requests carry the page's CSRF token (meta name="csrf-token") and same-origin
 * credentials.
 */
(function () {
  'use strict';

  var MEDIA_WAIT_MS = 3000;
  var MSE_WAIT_MS = 10000;
  var LIVE_EDGE_S = 1.5;

  function LiveError(message, status) {
    var err = new Error(message);
    err.name = 'LiveError';
    err.status = status || 0;
    return err;
  }

  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute('content') : null;
  }

  function headers(opts, extra) {
    var h = {};
    if (opts.token) h.Authorization = 'Bearer ' + opts.token;
    var csrf = csrfToken();
    if (csrf) h['X-CSRF-Token'] = csrf;
    for (var k in extra) h[k] = extra[k];
    return h;
  }

  function cameraPath(camera) {
    return '/api/cameras/' + encodeURIComponent(camera);
  }

  function delay(ms) {
    return new Promise(function (resolve) { setTimeout(resolve, ms); });
  }

  /* Resolves once the video shows a picture (or rejects after ms). */
  function pictureWithin(video, ms, closed) {
    return new Promise(function (resolve, reject) {
      var started = Date.now();
      (function poll() {
        if (closed()) return reject(LiveError('closed'));
        if (video.readyState >= 2 && video.videoWidth > 0) return resolve();
        if (Date.now() - started > ms) return reject(LiveError('no picture within ' + ms + ' ms'));
        setTimeout(poll, 100);
      })();
    });
  }

  function gathered(pc, ms) {
    if (pc.iceGatheringState === 'complete') return Promise.resolve();
    return new Promise(function (resolve) {
      var done = function () {
        if (pc.iceGatheringState === 'complete') {
          pc.removeEventListener('icegatheringstatechange', done);
          resolve();
        }
      };
      pc.addEventListener('icegatheringstatechange', done);
      setTimeout(resolve, ms); // WHEP without trickle: send what we have
    });
  }

  function playMuted(video) {
    video.muted = true;
    video.playsInline = true;
    var p = video.play();
    if (p && p.catch) p.catch(function () { /* autoplay refused: the page may retry */ });
  }

  /* ---- WebRTC (WHEP, RFC 9725) ---------------------------------------------------------- */

  function whep(video, camera, opts) {
    var closed = false;
    var location = null;
    var pc = new RTCPeerConnection({ iceServers: [] });
    var close = function () {
      if (closed) return;
      closed = true;
      pc.close();
      if (location) {
        fetch(location, {
          method: 'DELETE',
          credentials: 'same-origin',
          headers: headers(opts, {}),
          keepalive: true
        }).catch(function () { /* the session ends with the peer connection anyway */ });
      }
      if (video.srcObject) video.srcObject = null;
    };
    pc.addTransceiver('video', { direction: 'recvonly' });
    if (opts.audio) pc.addTransceiver('audio', { direction: 'recvonly' });
    var audio = 'none';
    var media = new MediaStream();
    pc.addEventListener('track', function (ev) {
      media.addTrack(ev.track);
      video.srcObject = media;
      playMuted(video);
    });
    var mode = 'webrtc';
    return pc.createOffer()
      .then(function (offer) { return pc.setLocalDescription(offer); })
      .then(function () { return gathered(pc, 2000); })
      .then(function () {
        return fetch(cameraPath(camera) + '/whep?stream=' + encodeURIComponent(opts.stream), {
          method: 'POST',
          credentials: 'same-origin',
          headers: headers(opts, { 'Content-Type': 'application/sdp' }),
          body: pc.localDescription.sdp
        });
      })
      .then(function (res) {
        if (res.status !== 201) {
          return res.text().then(function (body) {
            var detail = body;
            try { detail = JSON.parse(body).detail || body; } catch (e) { /* plain text */ }
            throw LiveError('WHEP ' + res.status + ': ' + detail, res.status);
          });
        }
        location = res.headers.get('Location');
        if (res.headers.get('X-Live-Mode') === 'transcode') mode = 'transcode';
        if (res.headers.get('X-Live-Audio') === 'opus') audio = 'opus';
        return res.text();
      })
      .then(function (sdp) { return pc.setRemoteDescription({ type: 'answer', sdp: sdp }); })
      .then(function () {
        pc.addEventListener('connectionstatechange', function () {
          if (pc.connectionState === 'failed' || pc.connectionState === 'closed') close();
        });
        return pictureWithin(video, MEDIA_WAIT_MS, function () { return closed; });
      })
      .then(function () { return { mode: mode, audio: audio, close: close }; })
      .catch(function (err) { close(); throw err; });
  }

  /* ---- Media Source Extensions over a WebSocket (Moonfire's design) --------------------- */

  function mse(video, camera, opts) {
    return new Promise(function (resolve, reject) {
      var scheme = window.location.protocol === 'https:' ? 'wss:' : 'ws:';
      var url = scheme + '//' + window.location.host + cameraPath(camera) + '/live?stream=' +
        encodeURIComponent(opts.stream);
      // A page on its session cookie needs no subprotocol; a bearer token cannot go in a
      // WebSocket's headers, so it is offered as a subprotocol beside 'nvr-live'.
      var ws = opts.token ? new WebSocket(url, ['nvr-live', 'bearer.' + opts.token]) : new WebSocket(url);
      ws.binaryType = 'arraybuffer';
      var closed = false;
      var settled = false;
      var mode = 'mse';
      var source = null;
      var buffer = null;
      var pending = [];
      var poster = null;
      var objectUrl = null;

      var close = function () {
        if (closed) return;
        closed = true;
        try { ws.close(); } catch (e) { /* already closed */ }
        if (poster) URL.revokeObjectURL(poster);
        if (objectUrl) {
          video.removeAttribute('src');
          video.load();
          URL.revokeObjectURL(objectUrl);
        }
      };
      var ready = function () {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        resolve({ mode: mode, close: close });
      };
      var fail = function (err) {
        close();
        if (!settled) {
          settled = true;
          clearTimeout(timer);
          reject(err);
        }
      };
      var timer = setTimeout(function () {
        fail(LiveError('no live picture over the WebSocket within ' + MSE_WAIT_MS + ' ms'));
      }, MSE_WAIT_MS);

      var pump = function () {
        if (!buffer || buffer.updating || !pending.length || closed) return;
        try {
          buffer.appendBuffer(pending.shift());
        } catch (err) {
          fail(LiveError('MSE refused a fragment: ' + err.message));
        }
      };
      var keepLive = function () {
        var b = video.buffered;
        if (!b.length) return;
        var end = b.end(b.length - 1);
        // Start at (and stay near) the live edge, not at the GOP the server sent first; from
        // a first still (the server's cached keyframe) jump the gap to the camera's next GOP.
        if (end - video.currentTime > LIVE_EDGE_S || video.currentTime < b.start(b.length - 1)) {
          video.currentTime = Math.max(b.start(b.length - 1), end - 0.3);
        }
        if (!buffer.updating && b.start(0) < end - 30) {
          buffer.remove(0, end - 20);
        }
        if (video.paused) playMuted(video);
        if (video.readyState >= 2) ready();
      };

      ws.addEventListener('message', function (ev) {
        if (typeof ev.data === 'string') {
          var head = JSON.parse(ev.data);
          if (head.mode === 'snapshot') {
            mode = 'snapshot';
            video.dataset.liveMode = mode;
            return;
          }
          if (head.mode === 'transcode') mode = 'transcode';
          if (!window.MediaSource || !MediaSource.isTypeSupported(head.mime)) {
            fail(LiveError('this browser cannot play ' + head.mime));
            return;
          }
          source = new MediaSource();
          objectUrl = URL.createObjectURL(source);
          source.addEventListener('sourceopen', function () {
            buffer = source.addSourceBuffer(head.mime);
            buffer.mode = 'segments';
            buffer.addEventListener('updateend', function () { keepLive(); pump(); });
            pump();
          });
          video.src = objectUrl;
          return;
        }
        if (mode === 'snapshot') {
          var next = URL.createObjectURL(new Blob([ev.data], { type: 'image/jpeg' }));
          video.poster = next;
          if (poster) URL.revokeObjectURL(poster);
          poster = next;
          ready();
          return;
        }
        pending.push(ev.data);
        pump();
      });
      ws.addEventListener('close', function (ev) {
        if (!settled) fail(LiveError('live WebSocket closed (' + ev.code + ')', ev.code === 1008 ? 403 : 0));
        closed = true;
      });
      ws.addEventListener('error', function () {
        fail(LiveError('live WebSocket refused or failed'));
      });
    });
  }

  /* ---- attach ----------------------------------------------------------------------------- */

  function attach(video, camera, opts) {
    opts = opts || {};
    var options = {
      mode: opts.mode || 'auto',
      stream: opts.stream === 'sub' ? 'sub' : 'main',
      token: opts.token || null,
      audio: opts.audio === true
    };
    if (video.nvrLive) video.nvrLive.close();
    var settle = function (session) {
      video.dataset.liveMode = session.mode;
      video.dataset.liveAudio = session.audio || 'none';
      var handle = {
        mode: session.mode,
        audio: session.audio || 'none',
        close: function () {
          session.close();
          if (video.nvrLive === handle) {
            video.nvrLive = null;
            delete video.dataset.liveMode;
            delete video.dataset.liveAudio;
          }
        }
      };
      video.nvrLive = handle;
      return handle;
    };
    if (options.mode === 'webrtc') return whep(video, camera, options).then(settle);
    if (options.mode === 'mse') return mse(video, camera, options).then(settle);
    if (typeof RTCPeerConnection === 'undefined') return mse(video, camera, options).then(settle);
    return whep(video, camera, options).then(settle, function (err) {
      if (err.status === 401 || err.status === 403 || err.status === 404) throw err;
      return delay(0).then(function () { return mse(video, camera, options); }).then(settle);
    });
  }

  window.NvrLive = { attach: attach };
})();
