// SPDX-License-Identifier: Apache-2.0
// The browser side of a voxrelay call: microphone in, reply audio out, and
// the transceiver's JSON events (data channel "events") shown as text.
//
// For people: the Call and Hang up buttons. The signaling API is this page's
// own origin unless ?signaling=<url> names another (a page served elsewhere,
// cross-origin: signaling must allow that origin by CORS); ?token= fills the
// Bearer token, ?autostart=1 places the call on load.
//
// For scripts (lab/browser.py drives this over the DevTools protocol), the
// same logic as promises on window.voxrelay:
//   call({url, bearer})  -> {ok, status, body, location}; ok is false, with the
//                           HTTP status and body, when signaling refused the
//                           offer (status 0: the fetch itself failed: network, CORS)
//   stats()              -> {connectionState, iceConnectionState, pair, inbound, outbound}
//   hangup()             -> {status} of the DELETE (0: no call to end)
//   events, errors       -> what the data channel and the page saw so far
"use strict";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(window.location.search);
let pc = null;
let callUrl = null;  // absolute URL of the call (the POST's Location, resolved)
let bearer = "";
const events = [];
const errors = [];

function setStatus(text) { $("status").textContent = text; }

function log(cls, text) {
  const p = document.createElement("p");
  p.className = cls;
  p.textContent = text;
  $("log").appendChild(p);
}

function headers(contentType) {
  const h = {};
  if (contentType) h["Content-Type"] = contentType;
  if (bearer) h["Authorization"] = "Bearer " + bearer;
  return h;
}

function onEvent(event) {
  events.push(event);
  if (event.type === "transcript" && event.final) {
    $("transcript").textContent = event.text;
    log("transcript", event.text);
  } else if (event.type === "transcript") {
    $("transcript").textContent = event.text + "…";
  } else if (event.type === "reply") {
    $("reply").textContent = event.text;
    log("reply", event.text);
  } else if (event.type === "timings" && event.first_audio_ms !== undefined) {
    log("timings", "first reply audio " + event.first_audio_ms.toFixed(0) + " ms after end of speech");
  } else if (event.type === "error") {
    log("error", "error: " + event.message);
  }
}

function signalingBase() {
  return params.get("signaling") || window.location.origin;
}

async function call(options) {
  const base = (options && options.url) || signalingBase();
  bearer = (options && options.bearer) || $("token").value || params.get("token") || "";
  setStatus("asking for the microphone");
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  pc = new RTCPeerConnection({ iceServers: [] });
  pc.onconnectionstatechange = () => setStatus(pc.connectionState);
  pc.ontrack = (e) => { $("remote").srcObject = e.streams[0] || new MediaStream([e.track]); };
  const channel = pc.createDataChannel("events");
  channel.onmessage = (m) => {
    try { onEvent(JSON.parse(m.data)); } catch (e) { errors.push("bad event: " + e); }
  };
  for (const track of stream.getAudioTracks()) pc.addTrack(track, stream);
  await pc.setLocalDescription(await pc.createOffer());
  // Wait for ICE gathering so that the offer carries candidates (no trickle).
  if (pc.iceGatheringState !== "complete") {
    await new Promise((resolve) => {
      pc.onicegatheringstatechange = () => { if (pc.iceGatheringState === "complete") resolve(); };
      setTimeout(resolve, 2000);
    });
  }
  setStatus("calling");
  const endpoint = new URL("/v1/calls", base).toString();
  let response;
  try {
    response = await fetch(endpoint, { method: "POST", headers: headers("application/sdp"), body: pc.localDescription.sdp });
  } catch (e) {
    // A network failure or a CORS refusal: the browser hides which.
    setStatus("error: " + e);
    errors.push("POST " + endpoint + ": " + e);
    pc.close(); pc = null;
    return { ok: false, status: 0, body: String(e), location: null };
  }
  const body = await response.text();
  if (response.status !== 201) {
    let message = body;
    try { message = (JSON.parse(body).error || {}).message || body; } catch (e) { /* not JSON */ }
    setStatus("refused: " + response.status + " " + message);
    errors.push("POST " + endpoint + ": " + response.status + " " + body);
    pc.close(); pc = null;
    return { ok: false, status: response.status, body: body, location: null };
  }
  const location = response.headers.get("Location");
  callUrl = location ? new URL(location, endpoint).toString() : null;
  await pc.setRemoteDescription({ type: "answer", sdp: body });
  $("hangup").disabled = false;
  return { ok: true, status: response.status, body: "", location: callUrl };
}

async function hangup() {
  let status = 0;
  if (callUrl) {
    try {
      status = (await fetch(callUrl, { method: "DELETE", headers: headers() })).status;
    } catch (e) {
      errors.push("DELETE " + callUrl + ": " + e);
    }
  }
  if (pc) pc.close();
  pc = null; callUrl = null;
  setStatus("ended");
  $("hangup").disabled = true;
  $("call").disabled = false;
  return { status: status };
}

function candidate(report) {
  if (!report) return null;
  return {
    type: report.candidateType, protocol: report.protocol,
    address: report.address || report.ip, port: report.port,
    relayProtocol: report.relayProtocol || null, tcpType: report.tcpType || null,
  };
}

// One summary of getStats(): the selected candidate pair and the audio counters.
async function stats() {
  if (!pc) return { connectionState: "closed", iceConnectionState: "closed", pair: null, inbound: null, outbound: null };
  const reports = new Map();
  (await pc.getStats()).forEach((r) => reports.set(r.id, r));
  let pair = null;
  let inbound = null;
  let outbound = null;
  for (const r of reports.values()) {
    if (r.type === "transport" && r.selectedCandidatePairId) {
      const p = reports.get(r.selectedCandidatePairId);
      if (p) {
        pair = {
          state: p.state, nominated: !!p.nominated,
          local: candidate(reports.get(p.localCandidateId)),
          remote: candidate(reports.get(p.remoteCandidateId)),
          requestsSent: p.requestsSent, responsesReceived: p.responsesReceived,
        };
      }
    } else if (r.type === "inbound-rtp" && r.kind === "audio") {
      inbound = {
        packets: r.packetsReceived || 0, bytes: r.bytesReceived || 0,
        totalAudioEnergy: r.totalAudioEnergy || 0, packetsLost: r.packetsLost || 0,
      };
    } else if (r.type === "outbound-rtp" && r.kind === "audio") {
      outbound = { packets: r.packetsSent || 0, bytes: r.bytesSent || 0 };
    }
  }
  return {
    connectionState: pc.connectionState, iceConnectionState: pc.iceConnectionState,
    pair: pair, inbound: inbound, outbound: outbound,
  };
}

window.voxrelay = { call: call, hangup: hangup, stats: stats, events: events, errors: errors };

$("call").onclick = () => {
  $("call").disabled = true;
  call().then((r) => { if (!r.ok) $("call").disabled = false; })
    .catch((e) => { setStatus("error: " + e); errors.push(String(e)); $("call").disabled = false; });
};
$("hangup").onclick = () => hangup();
if (params.get("autostart")) $("call").click();
