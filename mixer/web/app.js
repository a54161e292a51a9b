// The mixer's browser client: the wire protocol of protocol/README.md over the WebSocket of the
// page's own origin, Opus through WebCodecs (or 16-bit PCM where the browser has no WebCodecs),
// a playout buffer, and the room's roster, floor and chat. No framework and no build step.
//
// Query parameters (all optional; also for sharing a link): room, name, mode (talk|ptt|listen),
// audio (auto|webcodecs|pcm), join=1 (join at once), access_token (passed to the WebSocket URL
// for servers with keys), playout_ms (the playout buffer's target, 60 by default), and test=1,
// which records what is captured and played and exposes `window.mixerTest` (see the README).
"use strict";

// ---- Protocol constants (protocol/README.md) ----

const PROTOCOL_VERSION = 1;
const HEADER_LEN = 9;
const FRAME_TICKS = 960; // timestamp units (48 kHz samples) per 20 ms frame
const PCM_RATES = [8000, 16000, 22050, 44100, 48000];
const MAX_REDIRECTS = 3;

// A message for people for every error code of the protocol (its "Errors" table).
const ERROR_MESSAGES = {
  bad_message: "The server could not understand a message from this page.",
  unknown_type: "The server does not know a message this page sent; it may be older than the page.",
  message_too_large: "A message was too large for the server, which closed the connection.",
  unsupported_format: "The server does not accept this page's audio format.",
  invalid_room: "Room names are 1 to 64 letters, digits, '_', '.' or '-'.",
  invalid_name: "That name cannot be used: 1 to 64 visible characters, not starting with '['.",
  invalid_token: "The access token is not valid for this server.",
  token_required: "This server needs an access token: open the link your organiser gave you.",
  token_expired: "The access token has expired: get a fresh link.",
  token_wrong_room: "The access token does not grant this room.",
  token_insufficient: "The access token does not allow that.",
  name_taken: "Someone in the room already has that name (or one that looks like it). Pick another.",
  banned: "You were removed from this room and cannot join it again while it lasts.",
  replaced: "You joined this room from another tab or device, which took this one's place.",
  draining: "This server is being taken out of service and takes no new rooms. Try again shortly.",
  fleet_unavailable: "The servers cannot find or place this room right now. Try again in a few seconds.",
  recording_unavailable: "This room cannot be recorded here (the server records nothing, or is not recording it).",
  not_joined: "Join a room first.",
  already_joined: "Already in a room: leave it first.",
  room_full: "The room is full.",
  server_full: "The server is full. Try again later.",
  bad_audio_header: "The server rejected an audio frame from this page.",
  unsupported_version: "The server speaks another version of the audio protocol.",
  invalid_opus: "The server could not decode this page's audio.",
  frame_too_large: "An audio frame from this page was too large.",
  listen_only: "You are listening only: your microphone is not sent.",
  rate_limited: "Too many requests from this address; slow down and try again in a few seconds.",
  chat_rate_limited: "You are sending chat messages too fast; wait a moment.",
  control_rate_limited: "Too many requests at once; wait a moment.",
  server_busy: "The room is busy; try again in a moment.",
  resume_failed: "Could not get your place back after the connection dropped; joining afresh.",
  slow_consumer: "The connection was too slow to keep up with the audio, and the server dropped it.",
  join_timeout: "The connection sat idle without joining a room, and the server closed it.",
  ping_timeout: "The server heard nothing from this page for too long and closed the connection.",
  shutting_down: "The server is shutting down.",
  internal: "The server had an internal error.",
  forbidden: "Only moderators may do that.",
  mode_not_allowed: "That mode is not allowed for you in this room (walkie-talkie rooms are push to talk).",
  not_ptt: "The talk button works in push-to-talk mode only.",
  no_floor: "Someone else has the floor: wait until they finish.",
  unknown_participant: "That participant is no longer in the room.",
  invalid_gain: "Gains are between -20 and 20 dB.",
  removed: "A moderator removed you from the room.",
  invalid_chat: "Chat messages are 1 to 1000 characters, not only spaces.",
  invalid_settings: "The server does not accept those room settings.",
  room_exists: "A room of that name exists already: join it, or pick another name.",
  unknown_room: "There is no room of that name.",
};

// A message for every WebSocket close code the server uses.
const CLOSE_MESSAGES = {
  1000: "Disconnected.",
  1001: "The server is going away (shutting down).",
  1002: "The connection broke a WebSocket rule and was closed.",
  1005: "The connection closed without a reason.",
  1006: "The connection dropped.",
  1007: "The server received text that is not UTF-8 and closed the connection.",
  1008: "The server closed the connection (policy).",
  1009: "A message was too large; the server closed the connection.",
  1011: "The server had an internal error and closed the connection.",
  4307: "The room lives on another server: moving there.",
};

// ---- Page state ----

const params = new URLSearchParams(location.search);
const testing = params.get("test") === "1";
const $ = (id) => document.getElementById(id);

const state = {
  ws: null,
  wsUrl: null,
  joined: false,
  leaving: false,
  joinRequest: null, // the last join sent (for resuming)
  me: null,
  room: null,
  mode: "talk",
  muted: false,
  floor: { policy: "open" },
  roster: new Map(), // id -> {id, name, mode, role, muted, talking}
  resumeToken: null,
  reconnectAttempt: 0,
  redirects: 0,
  pttHeld: false,
  closingError: null, // an error that announced the close
  errors: [], // every error code received (for tests and the curious)
  resumes: 0, // times the page got its place back after a dropped connection
  pendingCreate: null,
};

const audio = {
  path: null, // "webcodecs" or "pcm"
  ctx: null,
  mic: null,
  playout: null,
  encoder: null,
  decoder: null,
  pending: [], // what to do with each frame given to the encoder, in order
  sequence: Math.floor(Math.random() * 65536),
  timestamp: Math.floor(Math.random() * 2 ** 32),
  sending: false, // whether the last frame was sent (the next one after a pause has M)
  blockIndex: 0,
  sent: 0,
  received: 0,
  playoutStats: {},
};

// ---- UI ----

function setStatus(text) {
  $("status").textContent = text;
}

function showAlert(text) {
  const alert = $("alert");
  alert.textContent = text || "";
  alert.hidden = !text;
}

function errorMessage(code, detail) {
  return ERROR_MESSAGES[code] || `The server reported an error (${code}): ${detail}`;
}

function nameOf(id) {
  if (id === state.me) return "you";
  const p = state.roster.get(id);
  return p ? p.name : `#${id}`;
}

function render() {
  $("lobby").hidden = state.joined;
  $("room-view").hidden = !state.joined;
  if (!state.joined) return;
  $("room-title").textContent = `Room ${state.room}`;
  const floor = state.floor;
  $("floor").textContent =
    floor.policy === "single"
      ? floor.holder != null
        ? `Walkie-talkie room: ${nameOf(floor.holder)} ${floor.holder === state.me ? "have" : "has"} the floor.`
        : "Walkie-talkie room: the floor is free."
      : "Open room: everyone may talk at once.";
  const ptt = $("ptt");
  ptt.hidden = state.mode !== "ptt";
  ptt.classList.toggle("on", floorIsMine() && state.pttHeld);
  ptt.setAttribute("aria-pressed", String(state.pttHeld));
  const mute = $("mute");
  mute.hidden = state.mode === "listen";
  mute.textContent = state.muted ? "Unmute" : "Mute";
  mute.setAttribute("aria-pressed", String(state.muted));
  const roster = $("roster");
  roster.replaceChildren();
  const everyone = [{ id: state.me, name: $("name").value, mode: state.mode, you: true }];
  for (const p of state.roster.values()) everyone.push(p);
  for (const p of everyone) {
    const li = document.createElement("li");
    const talking = p.you ? audio.sending && !state.muted : p.talking;
    li.classList.toggle("talking", Boolean(talking));
    const name = document.createElement("span");
    name.textContent = p.you ? `${p.name} (you)` : p.name;
    li.append(name);
    const tags = [p.mode === "ptt" ? "push to talk" : p.mode === "listen" ? "listening" : "open mic"];
    if (p.role === "moderator") tags.push("moderator");
    if (p.you ? state.muted : p.muted) tags.push("muted");
    if (floor.holder === p.id) tags.push("has the floor");
    for (const t of tags) {
      const tag = document.createElement("span");
      tag.className = t === "has the floor" ? "tag floor-tag" : "tag";
      tag.textContent = t;
      li.append(tag);
    }
    if (talking) li.setAttribute("aria-label", `${name.textContent}, talking`);
    roster.append(li);
  }
}

function addChat(from, text, when, system) {
  const li = document.createElement("li");
  if (system) {
    li.className = "system";
    li.textContent = text;
  } else {
    const time = document.createElement("time");
    time.dateTime = new Date(when).toISOString();
    time.textContent = new Date(when).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = from;
    li.append(time, who, document.createTextNode(text));
  }
  const log = $("chat-log");
  log.append(li);
  log.scrollTop = log.scrollHeight;
}

function renderRooms(rooms) {
  const list = $("rooms");
  list.replaceChildren();
  if (rooms.length === 0) {
    const li = document.createElement("li");
    li.className = "empty";
    li.textContent = "No rooms yet: name one above to create it.";
    list.append(li);
  }
  for (const room of rooms) {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    const kind = room.floor_policy === "single" ? ", walkie-talkie" : "";
    button.textContent = `${room.room} (${room.participants}${kind})`;
    button.addEventListener("click", () => {
      $("room").value = room.room;
      if (room.floor_policy === "single" && $("mode").value === "talk") $("mode").value = "ptt";
    });
    li.append(button);
    list.append(li);
  }
}

// ---- Connection ----

function serverUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const token = params.get("access_token");
  const query = token ? `?access_token=${encodeURIComponent(token)}` : "";
  return `${scheme}//${location.host}/${query}`;
}

// Opens the WebSocket (if none is open) and resolves when it is.
function connect(url = state.wsUrl || serverUrl()) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN && state.wsUrl === url) {
    return Promise.resolve(state.ws);
  }
  if (state.ws) state.ws.onclose = null;
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    state.ws = ws;
    state.wsUrl = url;
    state.closingError = null;
    ws.onopen = () => resolve(ws);
    ws.onmessage = (event) =>
      typeof event.data === "string" ? onControl(JSON.parse(event.data)) : onAudio(event.data);
    ws.onclose = (event) => {
      reject(new Error(CLOSE_MESSAGES[event.code] || `closed (${event.code})`));
      onClose(ws, event);
    };
  });
}

function send(message) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(message));
}

function format() {
  if (audio.path === "pcm") {
    return { codec: "pcm16", sample_rate: audio.ctx.sampleRate, channels: 1, frame_ms: 20 };
  }
  return { codec: "opus", sample_rate: 48000, channels: 1, frame_ms: 20 };
}

async function join({ create = false } = {}) {
  showAlert("");
  const room = $("room").value.trim();
  const name = $("name").value.trim();
  state.mode = $("mode").value;
  try {
    await startAudio($("audio").value, state.mode !== "listen");
  } catch (error) {
    showAlert(`Audio could not start: ${error.message}`);
    return;
  }
  state.joinRequest = { type: "join", room, name, mode: state.mode, format: format() };
  state.redirects = 0;
  try {
    await connect(serverUrl());
  } catch (error) {
    showAlert(`Cannot reach the server: ${error.message}`);
    return;
  }
  if (create) {
    state.pendingCreate = room;
    send({ type: "create_room", room, floor_policy: "single" });
  } else {
    send(state.joinRequest);
  }
  setStatus(`Joining ${room}…`);
}

function leave() {
  state.leaving = true;
  send({ type: "leave" });
  state.joined = false;
  state.resumeToken = null;
  state.roster.clear();
  setStatus("Left the room");
  render();
  listRooms();
}

async function listRooms() {
  try {
    await connect(serverUrl());
    send({ type: "list_rooms" });
  } catch {
    // The lobby list is a convenience; the join reports real problems.
  }
}

function onClose(ws, event) {
  if (ws !== state.ws) return;
  state.ws = null;
  const error = state.closingError;
  if (event.code === 4307 && state.redirect) {
    const { url, resume_token: resume } = state.redirect;
    state.redirect = null;
    if (state.redirects++ < MAX_REDIRECTS) {
      setStatus("Moving to the room's server…");
      const request = resume ? { ...state.joinRequest, resume } : state.joinRequest;
      connect(url).then(() => send(request), (e) => showAlert(`Cannot follow the redirect: ${e.message}`));
      return;
    }
    showAlert("Too many redirects between servers; giving up.");
  }
  const dropped = !error && (event.code === 1006 || event.code === 1005);
  if (state.joined && dropped && state.resumeToken) {
    reconnect();
    return;
  }
  if (!state.joined && !error && !state.joinRequest) {
    setStatus("Not connected");
    return; // an idle lobby connection timing out is nothing to report
  }
  const wasJoined = state.joined;
  state.joined = false;
  audio.sending = false;
  render();
  setStatus("Disconnected");
  if (wasJoined || error) {
    showAlert(error ? errorMessage(error.code, error.message) : CLOSE_MESSAGES[event.code] || `Closed (${event.code}).`);
  }
}

// After a dropped connection: join again with the resume token, backing off, within the
// server's resume window (30 s by default).
function reconnect() {
  const attempt = state.reconnectAttempt++;
  const delay = Math.min(250 * 2 ** attempt, 4000);
  setStatus(`Connection lost; reconnecting (attempt ${attempt + 1})…`);
  if (attempt > 10) {
    state.joined = false;
    render();
    showAlert("Could not reconnect to the server.");
    return;
  }
  setTimeout(async () => {
    try {
      await connect(serverUrl());
      send({ ...state.joinRequest, resume: state.resumeToken });
    } catch {
      // onClose has scheduled the next attempt.
    }
  }, delay);
}

function onControl(message) {
  switch (message.type) {
    case "joined": {
      state.joined = true;
      state.leaving = false;
      state.reconnectAttempt = 0;
      state.me = message.participant_id;
      state.room = message.room;
      state.floor = message.floor || { policy: "open" };
      state.resumeToken = message.resume_token || null;
      if (message.resumed) state.resumes++;
      state.roster.clear();
      for (const p of message.participants) state.roster.set(p.id, { ...p });
      if (!message.resumed) {
        state.muted = false;
        $("chat-log").replaceChildren();
      }
      resetDownlink();
      setStatus(message.resumed ? `Back in ${message.room}` : `In ${message.room} as ${$("name").value}`);
      showAlert("");
      if (message.replay_ms) addChat("", `Replaying the transmission on the air (${message.replay_ms} ms behind)…`, 0, true);
      break;
    }
    case "participant_joined":
      state.roster.set(message.participant.id, { ...message.participant });
      addChat("", `${message.participant.name} joined`, 0, true);
      break;
    case "participant_left": {
      const p = state.roster.get(message.participant_id);
      state.roster.delete(message.participant_id);
      if (p) addChat("", `${p.name} left (${message.reason.replace("_", " ")})`, 0, true);
      break;
    }
    case "talking_started":
    case "talking_stopped": {
      const p = state.roster.get(message.participant_id);
      if (p) p.talking = message.type === "talking_started";
      break;
    }
    case "mode_changed":
      if (message.participant_id === state.me) state.mode = message.mode;
      else if (state.roster.has(message.participant_id)) state.roster.get(message.participant_id).mode = message.mode;
      break;
    case "participant_muted":
      setMuted(message.participant_id, message.muted);
      if (message.participant_id === state.me && message.by != null) {
        showAlert(message.muted ? "A moderator muted you." : "A moderator unmuted you.");
      }
      break;
    case "room_muted":
      for (const id of message.participant_ids) setMuted(id, message.muted);
      break;
    case "floor_granted":
      if (state.floor.policy === "single") state.floor.holder = message.participant_id;
      if (message.participant_id === state.me && !state.pttHeld) send({ type: "floor_release" });
      break;
    case "floor_denied":
      setStatus(`${nameOf(message.holder)} is talking: wait for the floor.`);
      break;
    case "floor_released":
      if (state.floor.holder === message.participant_id) delete state.floor.holder;
      break;
    case "caught_up":
      addChat("", "Caught up: live.", 0, true);
      break;
    case "chat":
      addChat(message.from === state.me ? "you" : message.name, message.text, message.ts_ms);
      break;
    case "rooms":
      renderRooms(message.rooms);
      break;
    case "room_info":
      if (state.pendingCreate === message.room) {
        state.pendingCreate = null;
        send(state.joinRequest);
      }
      break;
    case "redirect":
      state.redirect = message;
      break;
    case "recording":
      // Everyone is told when the room's mix is recorded, and the recorder is in the roster.
      addChat("", message.recording
        ? `This room is being recorded (${message.file}).`
        : `Recording stopped (${(message.reason || "stopped").replace("_", " ")}).`, 0, true);
      break;
    case "error":
      onError(message);
      break;
    default:
      break; // unknown server messages are ignored (forward compatibility)
  }
  render();
}

function setMuted(id, muted) {
  if (id === state.me) state.muted = muted;
  else if (state.roster.has(id)) state.roster.get(id).muted = muted;
}

function onError({ code, message }) {
  state.errors.push(code);
  if (code === "resume_failed" && state.joinRequest) {
    showAlert(errorMessage(code, message));
    state.resumeToken = null;
    send(state.joinRequest);
    return;
  }
  if (code === "room_exists" && state.pendingCreate) {
    state.pendingCreate = null;
    send(state.joinRequest);
  }
  if (["slow_consumer", "join_timeout", "ping_timeout", "shutting_down", "removed", "replaced", "message_too_large"].includes(code)) {
    state.closingError = { code, message };
    if (code === "join_timeout" && !state.joined) state.closingError = null;
  }
  if (!state.closingError || state.joined) showAlert(errorMessage(code, message));
}

// ---- Audio ----

function floorIsMine() {
  return state.floor.policy !== "single" || state.floor.holder === state.me;
}

function transmitting() {
  if (!state.joined || state.muted) return false;
  if (state.mode === "talk") return true;
  return state.mode === "ptt" && state.pttHeld && floorIsMine();
}

// Chooses the audio path, opens the audio context, the microphone (unless listening only) and
// the worklets. `choice` is auto, webcodecs or pcm.
async function startAudio(choice, withMic) {
  if (audio.ctx) return;
  const ctx = new AudioContext({ sampleRate: 48000, latencyHint: "interactive" });
  const webcodecs = typeof AudioEncoder !== "undefined" && typeof AudioDecoder !== "undefined";
  let path = choice === "auto" ? (webcodecs ? "webcodecs" : "pcm") : choice;
  if (path === "webcodecs" && (!webcodecs || ctx.sampleRate !== 48000)) {
    if (choice === "webcodecs") throw new Error("this browser has no WebCodecs Opus at 48 kHz");
    path = "pcm";
  }
  if (path === "webcodecs") {
    const config = { codec: "opus", sampleRate: 48000, numberOfChannels: 1 };
    const supported = (await AudioEncoder.isConfigSupported({ ...config, bitrate: 32000 })).supported &&
      (await AudioDecoder.isConfigSupported(config)).supported;
    if (!supported) {
      if (choice === "webcodecs") throw new Error("this browser cannot encode or decode Opus");
      path = "pcm";
    }
  }
  if (path === "pcm" && !PCM_RATES.includes(ctx.sampleRate)) {
    throw new Error(`the audio device runs at ${ctx.sampleRate} Hz, which PCM mode does not support`);
  }
  audio.path = path;
  audio.ctx = ctx;
  $("path").textContent = `Audio: ${path === "webcodecs" ? "Opus via WebCodecs" : `PCM at ${ctx.sampleRate} Hz`}`;
  await ctx.audioWorklet.addModule("/app/worklet.js");
  const targetMs = Number(params.get("playout_ms")) || 60;
  audio.playout = new AudioWorkletNode(ctx, "playout", { processorOptions: { targetMs }, outputChannelCount: [1] });
  audio.playout.port.onmessage = (event) => (audio.playoutStats = event.data);
  // Everything the listener hears goes through one bus; in test mode a recorder taps it, so the
  // tests analyse exactly what reaches the speakers.
  const bus = new GainNode(ctx);
  audio.playout.connect(bus).connect(ctx.destination);
  if (testing) {
    const tap = new AudioWorkletNode(ctx, "recorder", { processorOptions: { blockSize: 1024 } });
    tap.port.onmessage = (event) => history.played.push(event.data.samples, outputEpochMs(event.data.frame));
    bus.connect(tap).connect(ctx.destination);
  }
  if (path === "webcodecs") startCodecs();
  if (withMic) {
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
    audio.mic = stream;
    const source = ctx.createMediaStreamSource(stream);
    const capture = new AudioWorkletNode(ctx, "recorder", {
      processorOptions: { blockSize: ctx.sampleRate / 50 },
    });
    capture.port.onmessage = (event) => onMicBlock(event.data.samples);
    // The recorder's output is silence; connecting it keeps it pulled by the graph. The
    // microphone itself never reaches the speakers.
    source.connect(capture).connect(ctx.destination);
  }
  if (ctx.state === "suspended") {
    $("start-audio").hidden = false;
    setStatus("Click “Start audio” to hear the room.");
  }
}

function startCodecs() {
  audio.encoder = new AudioEncoder({
    output: (chunk) => {
      const meta = audio.pending.shift();
      if (!meta || !meta.send) {
        audio.sending = false;
        return;
      }
      const frame = new Uint8Array(HEADER_LEN + chunk.byteLength);
      chunk.copyTo(frame.subarray(HEADER_LEN));
      sendFrame(frame, meta);
    },
    error: (e) => showAlert(`Opus encoder failed: ${e.message}`),
  });
  audio.encoder.configure({
    codec: "opus",
    sampleRate: 48000,
    numberOfChannels: 1,
    bitrate: 32000,
    opus: { frameDuration: 20000 },
  });
  audio.decoder = new AudioDecoder({
    output: (data) => {
      const samples = new Float32Array(data.numberOfFrames);
      data.copyTo(samples, { planeIndex: 0, format: "f32-planar" });
      data.close();
      audio.playout.port.postMessage(samples, [samples.buffer]);
    },
    error: (e) => {
      showAlert(`Opus decoder failed: ${e.message}`);
      resetDownlink();
    },
  });
  resetDownlink();
}

function resetDownlink() {
  if (audio.decoder && audio.decoder.state !== "closed") {
    audio.decoder.reset();
    audio.decoder.configure({ codec: "opus", sampleRate: 48000, numberOfChannels: 1 });
  }
}

// 20 ms from the microphone: measure, and encode and send while transmitting.
function onMicBlock(samples) {
  if (testing) history.captured.push(samples, Date.now() - (samples.length * 1000) / audio.ctx.sampleRate);
  let sum = 0;
  for (const s of samples) sum += s * s;
  const rms = Math.sqrt(sum / samples.length);
  $("meter").value = Math.min(1, Math.max(0, 1 + Math.log10(rms + 1e-9) / 3)); // -60..0 dBFS
  const level = Math.min(126, Math.max(0, Math.round(-20 * Math.log10(rms + 1e-12))));
  const send = transmitting();
  const voice = send && level < 50;
  const meta = { send, level, voice, timestamp: audio.timestamp };
  audio.timestamp = (audio.timestamp + FRAME_TICKS) >>> 0;
  if (audio.path === "webcodecs") {
    const us = audio.blockIndex++ * 20000;
    audio.pending.push(meta);
    // Across a pause the encoder goes on, on silence, so the next spurt is coded from the state
    // the server's decoder expects (protocol: "Across a pause").
    const data = new AudioData({
      format: "f32-planar",
      sampleRate: 48000,
      numberOfFrames: samples.length,
      numberOfChannels: 1,
      timestamp: us,
      data: send ? samples : new Float32Array(samples.length),
    });
    audio.encoder.encode(data);
    data.close();
  } else if (send) {
    const frame = new Uint8Array(HEADER_LEN + samples.length * 2);
    const view = new DataView(frame.buffer);
    for (let i = 0; i < samples.length; i++) {
      const s = Math.max(-1, Math.min(1, samples[i]));
      view.setInt16(HEADER_LEN + i * 2, Math.round(s * 32767), true);
    }
    sendFrame(frame, meta);
  } else {
    audio.sending = false;
  }
}

// Fills in the 9-byte header (protocol: "Audio frames") and sends the frame.
function sendFrame(frame, meta) {
  if (!meta.send || !state.ws || state.ws.readyState !== WebSocket.OPEN) {
    audio.sending = false;
    return;
  }
  const view = new DataView(frame.buffer);
  view.setUint8(0, PROTOCOL_VERSION);
  view.setUint8(1, audio.sending ? 0 : 1); // M on the first frame after a pause
  view.setUint16(2, audio.sequence);
  view.setUint32(4, meta.timestamp);
  view.setUint8(8, (meta.voice ? 0x80 : 0) | meta.level);
  audio.sequence = (audio.sequence + 1) & 0xffff;
  const wasSending = audio.sending;
  audio.sending = true;
  state.ws.send(frame);
  audio.sent++;
  if (!wasSending) render();
}

// A binary frame from the server: the mix of everyone else.
function onAudio(buffer) {
  if (!audio.ctx || buffer.byteLength <= HEADER_LEN) return;
  const bytes = new Uint8Array(buffer);
  if (bytes[0] !== PROTOCOL_VERSION) return;
  audio.received++;
  const payload = bytes.subarray(HEADER_LEN);
  if (audio.path === "webcodecs") {
    const timestamp = new DataView(buffer).getUint32(4);
    audio.decoder.decode(new EncodedAudioChunk({ type: "key", timestamp, data: payload }));
  } else {
    const view = new DataView(buffer, HEADER_LEN);
    const samples = new Float32Array(payload.length / 2);
    for (let i = 0; i < samples.length; i++) samples[i] = view.getInt16(i * 2, true) / 32768;
    audio.playout.port.postMessage(samples, [samples.buffer]);
  }
}

// When the sample at context frame `frame` reaches the speakers, in ms since the Unix epoch.
function outputEpochMs(frame) {
  const ts = audio.ctx.getOutputTimestamp();
  if (!ts.performanceTime) return Date.now();
  return performance.timeOrigin + ts.performanceTime + (frame / audio.ctx.sampleRate - ts.contextTime) * 1000;
}

// ---- Test hooks (test=1): what was captured and played, for the tests to analyse ----

class History {
  constructor(seconds) {
    this.blocks = []; // {samples, epochMs of the first sample}
    this.keep = seconds;
  }

  push(samples, epochMs) {
    this.blocks.push({ samples, epochMs });
    const rate = audio.ctx.sampleRate;
    let total = this.blocks.reduce((n, b) => n + b.samples.length, 0);
    while (total - this.blocks[0].samples.length > this.keep * rate) total -= this.blocks.shift().samples.length;
  }

  last(seconds) {
    const want = Math.round(seconds * audio.ctx.sampleRate);
    const out = [];
    let n = 0;
    for (let i = this.blocks.length - 1; i >= 0 && n < want; i--) {
      out.unshift(this.blocks[i].samples);
      n += this.blocks[i].samples.length;
    }
    const joined = new Float32Array(n);
    let at = 0;
    for (const s of out) joined.set(s, (at += s.length) - s.length);
    return joined.subarray(Math.max(0, n - want));
  }
}

const history = { played: new History(60), captured: new History(60) };

// Amplitude of `freq` in `x` (Goertzel over a Hann window): a full-scale sine reads 1.
function toneAmplitude(x, freq, rate) {
  const w = (2 * Math.PI * freq) / rate;
  const coeff = 2 * Math.cos(w);
  let s1 = 0;
  let s2 = 0;
  let windowSum = 0;
  for (let i = 0; i < x.length; i++) {
    const hann = 0.5 - 0.5 * Math.cos((2 * Math.PI * i) / (x.length - 1));
    windowSum += hann;
    const s0 = x[i] * hann + coeff * s1 - s2;
    s2 = s1;
    s1 = s0;
  }
  const power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
  return windowSum > 0 ? (2 * Math.sqrt(Math.max(0, power))) / windowSum : 0;
}

// Times (ms since the Unix epoch) at which `freq` rises through `amplitude` after 100 ms below
// half of it: 10 ms Hann windows every 2.5 ms, each timed at its centre, the crossing
// interpolated between two windows (as the Rust tests' onset detector does).
function onsets(source, freq, amplitude) {
  const rate = audio.ctx.sampleRate;
  const win = Math.round(rate / 100);
  const hop = Math.round(rate / 400);
  const { blocks, keep } = history[source];
  const all = history[source].last(keep);
  // Where each block starts in `all` (the oldest may start before it), and its time.
  const starts = [];
  let start = all.length - blocks.reduce((n, b) => n + b.samples.length, 0);
  for (const b of blocks) {
    starts.push({ start, epochMs: b.epochMs });
    start += b.samples.length;
  }
  let block = 0;
  const epochAt = (position) => {
    while (block + 1 < starts.length && starts[block + 1].start <= position) block++;
    return starts[block].epochMs + ((position - starts[block].start) * 1000) / rate;
  };
  const found = [];
  let quietFor = 0;
  let previous = null;
  for (let end = win; end <= all.length; end += hop) {
    const a = toneAmplitude(all.subarray(end - win, end), freq, rate);
    const centre = end - win / 2;
    if (a >= amplitude && quietFor >= rate / 10) {
      const at = previous && a > previous.a
        ? previous.centre + ((centre - previous.centre) * (amplitude - previous.a)) / (a - previous.a)
        : centre;
      found.push(epochAt(at));
      quietFor = 0;
    } else if (a < amplitude / 2) {
      quietFor += hop;
    } else if (a >= amplitude) {
      quietFor = 0;
    }
    previous = { centre, a };
  }
  return found;
}

if (testing) {
  window.mixerTest = Object.freeze({
    state: () => ({
      joined: state.joined,
      participantId: state.me,
      audioPath: audio.path,
      sampleRate: audio.ctx ? audio.ctx.sampleRate : null,
      // What the browser says its audio output adds (the device's buffer), in ms.
      outputLatencyMs: audio.ctx ? ((audio.ctx.baseLatency || 0) + (audio.ctx.outputLatency || 0)) * 1000 : null,
      contextState: audio.ctx ? audio.ctx.state : null,
      errors: [...state.errors],
      resumes: state.resumes,
      alert: $("alert").hidden ? null : $("alert").textContent,
      roster: [...state.roster.values()].map((p) => p.name),
      sent: audio.sent,
      received: audio.received,
      playout: audio.playoutStats,
    }),
    // Level in dB (0 = a full-scale sine) of `freq` in the last `seconds` played or captured:
    // the power average of 100 ms windows, so that a jump in phase (the playout buffer skipping
    // ahead) does not cancel the tone out as one long window would.
    toneDb: (source, freq, seconds) => {
      const rate = audio.ctx.sampleRate;
      const x = history[source].last(seconds);
      const win = rate / 10;
      let power = 0;
      let windows = 0;
      for (let end = win; end <= x.length; end += win, windows++) {
        power += toneAmplitude(x.subarray(end - win, end), freq, rate) ** 2;
      }
      return 10 * Math.log10(Math.max(1e-18, power / Math.max(1, windows)));
    },
    onsets,
  });
}

// ---- Wiring ----

function pressTalk(down) {
  if (state.mode !== "ptt" || !state.joined || state.pttHeld === down) return;
  state.pttHeld = down;
  send({ type: down ? "floor_request" : "floor_release" });
  if (!down && state.floor.holder === state.me) delete state.floor.holder;
  render();
}

function editing(target) {
  return target instanceof HTMLInputElement || target instanceof HTMLSelectElement || target instanceof HTMLTextAreaElement;
}

window.addEventListener("DOMContentLoaded", () => {
  for (const key of ["room", "name", "mode", "audio"]) {
    if (params.has(key)) $(key).value = params.get(key);
  }
  if (!$("name").value) $("name").value = `guest-${Math.floor(Math.random() * 9000 + 1000)}`;
  $("join-form").addEventListener("submit", (event) => {
    event.preventDefault();
    join();
  });
  $("create").addEventListener("click", () => {
    if ($("mode").value === "talk") $("mode").value = "ptt";
    if ($("join-form").reportValidity()) join({ create: true });
  });
  $("refresh").addEventListener("click", listRooms);
  $("leave").addEventListener("click", leave);
  $("mute").addEventListener("click", () => send({ type: "mute", muted: !state.muted }));
  $("start-audio").addEventListener("click", async () => {
    await audio.ctx.resume();
    $("start-audio").hidden = true;
    setStatus(`In ${state.room}`);
  });
  const ptt = $("ptt");
  ptt.addEventListener("pointerdown", (event) => {
    ptt.setPointerCapture(event.pointerId);
    pressTalk(true);
  });
  ptt.addEventListener("pointerup", () => pressTalk(false));
  ptt.addEventListener("pointercancel", () => pressTalk(false));
  window.addEventListener("keydown", (event) => {
    if (event.code === "Space" && !event.repeat && !editing(event.target)) {
      event.preventDefault();
      pressTalk(true);
    }
  });
  window.addEventListener("keyup", (event) => {
    if (event.code === "Space" && !editing(event.target)) {
      event.preventDefault();
      pressTalk(false);
    }
  });
  window.addEventListener("blur", () => pressTalk(false));
  $("chat-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("chat-text").value;
    if (!text.trim()) return;
    send({ type: "chat", text });
    $("chat-text").value = "";
  });
  if (params.get("join") === "1") join();
  else listRooms();
});
