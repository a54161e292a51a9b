// Audio worklets of the browser client: a recorder (the microphone, cut into 20 ms blocks for
// the encoder; and, for tests, a tap on what is played) and the playout buffer.

// Cuts its input into blocks of `blockSize` samples and posts each to the page with the
// context frame of its first sample. Its output is silence.
class Recorder extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.blockSize = options.processorOptions.blockSize;
    this.block = new Float32Array(this.blockSize);
    this.filled = 0;
    this.startFrame = 0;
  }

  process(inputs) {
    const input = inputs[0] && inputs[0][0];
    if (!input) return true;
    let offset = 0;
    while (offset < input.length) {
      if (this.filled === 0) this.startFrame = currentFrame + offset;
      const n = Math.min(input.length - offset, this.blockSize - this.filled);
      this.block.set(input.subarray(offset, offset + n), this.filled);
      this.filled += n;
      offset += n;
      if (this.filled === this.blockSize) {
        this.port.postMessage({ samples: this.block, frame: this.startFrame }, [this.block.buffer]);
        this.block = new Float32Array(this.blockSize);
        this.filled = 0;
      }
    }
    return true;
  }
}

// The playout buffer: a ring of received samples played at the audio clock. It waits until it
// holds `targetMs` before playing (at the start and after running dry), so network jitter up
// to that much is absorbed. Whatever is held beyond the target for a whole second (a sender
// whose clock runs fast, a burst after a stall) is skipped with a short cross-fade, so the
// delay never drifts upwards.
class Playout extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const { targetMs } = options.processorOptions;
    this.ring = new Float32Array(sampleRate * 2);
    this.read = 0; // total samples read (ever); the ring index is this modulo its length
    this.write = 0; // total samples written (ever)
    this.target = Math.round((sampleRate * targetMs) / 1000);
    this.slack = Math.round(sampleRate * 0.02);
    this.buffering = true;
    this.minDepth = Infinity;
    this.windowLeft = sampleRate; // samples until the next trim decision
    this.underruns = 0;
    this.skipped = 0;
    this.overflows = 0;
    this.reportLeft = 0;
    this.port.onmessage = (event) => this.push(event.data);
  }

  push(samples) {
    const capacity = this.ring.length;
    if (this.write + samples.length - this.read > capacity) {
      // More than two seconds queued: something stalled. Keep the newest.
      this.overflows++;
      this.read = this.write + samples.length - this.target;
    }
    for (let i = 0; i < samples.length; i++) this.ring[(this.write + i) % capacity] = samples[i];
    this.write += samples.length;
  }

  sample(index) {
    return this.ring[index % this.ring.length];
  }

  process(_inputs, outputs) {
    const out = outputs[0][0];
    const n = out.length;
    const depth = this.write - this.read;
    if (this.buffering) {
      out.fill(0);
      if (depth >= this.target) {
        this.buffering = false;
        this.minDepth = Infinity;
        this.windowLeft = sampleRate;
      }
    } else if (depth < n) {
      // Ran dry: the end of a talk spurt (the server pauses in silence) or a late packet.
      for (let i = 0; i < n; i++) out[i] = i < depth ? this.sample(this.read + i) : 0;
      this.read += depth;
      this.buffering = true;
      this.underruns++;
    } else {
      this.minDepth = Math.min(this.minDepth, depth);
      this.windowLeft -= n;
      const excess = this.minDepth - this.target;
      if (this.windowLeft <= 0 && excess > this.slack && depth - excess >= n) {
        // Everything the last second held beyond the target was never needed: skip it,
        // cross-fading from where we are to where we jump to over this quantum.
        for (let i = 0; i < n; i++) {
          const w = (i + 1) / n;
          out[i] = (1 - w) * this.sample(this.read + i) + w * this.sample(this.read + excess + i);
        }
        this.read += excess + n;
        this.skipped += excess;
      } else {
        for (let i = 0; i < n; i++) out[i] = this.sample(this.read + i);
        this.read += n;
      }
      if (this.windowLeft <= 0) {
        this.windowLeft = sampleRate;
        this.minDepth = Infinity;
      }
    }
    this.reportLeft -= n;
    if (this.reportLeft <= 0) {
      this.reportLeft = sampleRate / 4;
      this.port.postMessage({
        depthMs: ((this.write - this.read) * 1000) / sampleRate,
        underruns: this.underruns,
        skippedMs: (this.skipped * 1000) / sampleRate,
        overflows: this.overflows,
      });
    }
    return true;
  }
}

registerProcessor("recorder", Recorder);
registerProcessor("playout", Playout);
