"""Device approval: a registered device (a phone page, the `forwardauth device`
client) approves sign-ins and step-ups, with no central push service.

The device keeps one HTTP request open (`GET /api/v1/device/requests`, a
long-poll that follows an ETag of the user's pending approval requests) and
learns at once when someone waits for its approval. The browser that asked
shows a phrase of three common words; the device shows three phrases and the
user must pick the one the browser shows ("number matching"), so a user who
taps "approve" on a request they did not start denies it instead.

Modules, bottom up (none imports aiohttp at import time):
  settings    the `devices:` config section
  words       phrases and the three choices
  credentials pairing codes and device credentials (generated, hashed, checked)
  approvals   pure rules: new requests, judging a decision, the ETag of a set
  longpoll    the pure long-poll state machine
  hub         per-process wake-up of waiting polls, fed by the store's change feed
  service     the operations the routes call (pair, request, decide, poll)
  api         the device-facing HTTP API
  client      the device client (`forwardauth device pair|watch|forget`), cli its commands

What is stored (devices, pairing codes, approval requests, the change feed)
is in forwardauth.state: records.py, base.DeviceStore, and each backend.
"""
