// OpenRFT dashboard: one script, no dependencies, no build step.
//
// Everything shown comes from the server's JSON API (and its /dashboard/api data routes) and
// is rendered with DOM calls that treat every string as text (`textContent`, never parsed as
// markup): dataset rows and model answers are hostile. Charts are SVG paths drawn here.
//
// Live updates poll: a job page fetches only the events newer than the newest it has
// (`/dashboard/api/jobs/ID/events?since=EVENT`), and redraws in one pass. Each update's render time is measured (`performance.now()`) and kept in
// `window.rftDashboard.updates`, with how many events each poll fetched.
'use strict';

(function () {
  const KEY_STORAGE = 'openrft.apiKey';
  const POLL_MS = 1000;
  const metrics = (window.rftDashboard = { updates: [], fetches: [], errors: 0, uncaught: [] });
  // Script errors are kept for whoever inspects the page (the tests check there are none).
  window.addEventListener('error', (e) => metrics.uncaught.push(String(e.message)));
  window.addEventListener('unhandledrejection', (e) => metrics.uncaught.push(String(e.reason)));
  let current = null; // the live view: { stop() }

  // ---------------------------------------------------------------------------------------
  // DOM helpers

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name.startsWith('on')) el.addEventListener(name.slice(2), value);
      else if (name === 'text') el.textContent = String(value);
      else el.setAttribute(name, value === true ? '' : String(value));
    }
    append(el, ...children);
    return el;
  }

  function append(el, ...children) {
    for (const child of children.flat(Infinity)) {
      if (child === undefined || child === null || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  const SVG_NS = 'http://www.w3.org/2000/svg';
  function s(tag, attrs) {
    const el = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs || {})) el.setAttribute(name, String(value));
    return el;
  }

  function fmt(x, digits = 4) {
    if (x === null || x === undefined || Number.isNaN(x)) return '–';
    if (typeof x !== 'number') return String(x);
    if (Number.isInteger(x)) return String(x);
    return x.toFixed(digits);
  }

  function when(unix) {
    return unix ? new Date(unix * 1000).toLocaleString() : '–';
  }

  function duration(seconds) {
    if (!Number.isFinite(seconds) || seconds < 0) return '–';
    if (seconds < 60) return `${Math.round(seconds)} s`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
    return `${Math.floor(seconds / 3600)} h ${Math.round((seconds % 3600) / 60)} min`;
  }

  function notice(message) {
    const el = document.getElementById('notice');
    el.textContent = message || '';
    el.className = message ? 'shown' : '';
  }

  // ---------------------------------------------------------------------------------------
  // API

  function apiKey() {
    return sessionStorage.getItem(KEY_STORAGE) || '';
  }

  async function api(path, options = {}) {
    const headers = Object.assign({}, options.headers || {});
    const key = apiKey();
    if (key) headers.Authorization = `Bearer ${key}`;
    let body = options.body;
    if (body !== undefined && !(body instanceof FormData)) {
      headers['Content-Type'] = 'application/json';
      body = JSON.stringify(body);
    }
    const response = await fetch(path, { method: options.method || 'GET', headers, body });
    const text = await response.text();
    let json = null;
    try {
      json = text ? JSON.parse(text) : null;
    } catch (_) {
      json = null;
    }
    if (!response.ok) {
      const message = json && json.error && json.error.message ? json.error.message : `HTTP ${response.status}`;
      const error = new Error(message);
      error.status = response.status;
      throw error;
    }
    return json;
  }

  const enc = encodeURIComponent;

  function failed(error) {
    metrics.errors += 1;
    notice(error.status === 401 ? `${error.message} Paste the key above.` : error.message);
  }

  // ---------------------------------------------------------------------------------------
  // Charts: SVG line charts over steps, redrawn in one pass per update.

  const COLORS = ['#2563eb', '#dc2626', '#16a34a', '#9333ea', '#ea580c', '#0891b2', '#be185d', '#65a30d'];

  class Chart {
    constructor(id, title) {
      this.width = 560;
      this.height = 220;
      this.pad = { left: 52, right: 12, top: 12, bottom: 28 };
      this.series = new Map(); // name -> { xs, ys, path, color }
      this.svg = s('svg', {
        id,
        class: 'chart',
        viewBox: `0 0 ${this.width} ${this.height}`,
        role: 'img',
        'data-points': 0,
      });
      this.svg.append(
        s('rect', { x: this.pad.left, y: this.pad.top, width: this.width - this.pad.left - this.pad.right, height: this.height - this.pad.top - this.pad.bottom, class: 'plot' }),
      );
      this.labels = {};
      for (const name of ['ymax', 'ymin', 'xmin', 'xmax']) {
        const t = s('text', { class: 'axis' });
        this.labels[name] = t;
        this.svg.append(t);
      }
      this.legend = h('div', { class: 'legend' });
      this.el = h('figure', { class: 'chart-box' }, h('figcaption', { text: title }), this.svg, this.legend);
    }

    add(name, x, y) {
      if (y === null || y === undefined || !Number.isFinite(y)) return;
      let series = this.series.get(name);
      if (!series) {
        const color = COLORS[this.series.size % COLORS.length];
        series = { xs: [], ys: [], color, path: s('path', { class: 'line', stroke: color, 'data-series': name }) };
        this.series.set(name, series);
        this.svg.append(series.path);
        this.legend.append(h('span', { class: 'key' }, h('i', { class: 'swatch' }), name));
        this.legend.lastChild.firstChild.style.background = color;
      }
      series.xs.push(x);
      series.ys.push(y);
    }

    points() {
      let n = 0;
      for (const series of this.series.values()) n = Math.max(n, series.xs.length);
      return n;
    }

    draw() {
      let xmin = Infinity, xmax = -Infinity, ymin = Infinity, ymax = -Infinity;
      for (const { xs, ys } of this.series.values()) {
        for (let i = 0; i < xs.length; i++) {
          if (xs[i] < xmin) xmin = xs[i];
          if (xs[i] > xmax) xmax = xs[i];
          if (ys[i] < ymin) ymin = ys[i];
          if (ys[i] > ymax) ymax = ys[i];
        }
      }
      this.svg.setAttribute('data-points', this.points());
      if (xmin === Infinity) return;
      if (xmax === xmin) xmax = xmin + 1;
      if (ymax === ymin) {
        ymax += 0.5;
        ymin -= 0.5;
      }
      const { left, right, top, bottom } = this.pad;
      const w = this.width - left - right;
      const hgt = this.height - top - bottom;
      const sx = w / (xmax - xmin);
      const sy = hgt / (ymax - ymin);
      for (const { xs, ys, path } of this.series.values()) {
        const parts = new Array(xs.length);
        for (let i = 0; i < xs.length; i++) {
          const px = Math.round((left + (xs[i] - xmin) * sx) * 10) / 10;
          const py = Math.round((top + hgt - (ys[i] - ymin) * sy) * 10) / 10;
          parts[i] = (i === 0 ? 'M' : 'L') + px + ' ' + py;
        }
        // A lone point still shows, as a dot (round caps on a zero-length segment).
        if (xs.length === 1) parts.push('h0.01');
        path.setAttribute('d', parts.join(''));
      }
      const set = (label, x, y, text, anchor) => {
        label.setAttribute('x', x);
        label.setAttribute('y', y);
        label.setAttribute('text-anchor', anchor);
        label.textContent = text;
      };
      set(this.labels.ymax, left - 4, top + 10, fmt(ymax, 3), 'end');
      set(this.labels.ymin, left - 4, top + hgt, fmt(ymin, 3), 'end');
      set(this.labels.xmin, left, this.height - 8, `step ${fmt(xmin)}`, 'start');
      set(this.labels.xmax, this.width - right, this.height - 8, `step ${fmt(xmax)}`, 'end');
    }
  }

  // ---------------------------------------------------------------------------------------
  // Views

  function setView(view) {
    if (current) current.stop();
    current = view;
    const main = document.getElementById('main');
    main.replaceChildren(view.el);
    view.start();
  }

  // A view that polls `tick` every POLL_MS while it is shown.
  class Polling {
    constructor() {
      this.el = h('section');
      this.stopped = false;
      this.timer = null;
    }
    start() {
      this.loop();
    }
    async loop() {
      if (this.stopped) return;
      try {
        await this.tick();
        notice('');
      } catch (error) {
        failed(error);
      }
      if (!this.stopped && this.live()) this.timer = setTimeout(() => this.loop(), POLL_MS);
    }
    live() {
      return true;
    }
    stop() {
      this.stopped = true;
      clearTimeout(this.timer);
    }
  }

  const FINAL = new Set(['succeeded', 'failed', 'cancelled']);

  class JobsView extends Polling {
    constructor() {
      super();
      this.body = h('tbody', { id: 'jobs-body' });
      append(this.el, h('h1', { text: 'Fine-tuning jobs' }),
        h('table', { class: 'list' },
          h('thead', {}, h('tr', {}, ['Job', 'Status', 'Model', 'Fine-tuned model', 'Created'].map((t) => h('th', { text: t })))),
          this.body));
    }
    async tick() {
      const jobs = await api('/v1/fine_tuning/jobs?limit=100');
      this.body.replaceChildren(...jobs.data.map((job) => h('tr', { class: 'job-row', 'data-id': job.id },
        h('td', {}, h('a', { href: `#/jobs/${enc(job.id)}`, text: job.id })),
        h('td', {}, h('span', { class: `status status-${job.status}`, text: job.status })),
        h('td', { text: job.model }),
        h('td', { text: job.fine_tuned_model || '–' }),
        h('td', { text: when(job.created_at) }))));
      if (jobs.data.length === 0) this.body.append(h('tr', {}, h('td', { colspan: 5, class: 'muted', text: 'No jobs yet: create one with POST /v1/fine_tuning/jobs.' })));
    }
  }

  class JobView extends Polling {
    constructor(id) {
      super();
      this.id = id;
      this.newestId = null;
      this.metricsCount = 0;
      this.lastStep = 0;
      this.totalSteps = 0;
      this.stepSeconds = [];
      this.latestTrain = null;
      this.latestValid = null;
      this.latestValidError = null;
      this.warning = null;
      this.job = null;
      this.followLatest = true;
      this.samplesStep = null;
      this.sampleSteps = [];
      this.sort = { key: null, descending: true };
      this.charts = {
        reward: new Chart('chart-reward', 'Reward: train mean, validation, per grader'),
        policy: new Chart('chart-policy', 'KL, entropy, clip fraction'),
        speed: new Chart('chart-speed', 'Tokens per second (sampling)'),
        time: new Chart('chart-time', 'Step time (s)'),
      };
      this.title = h('h1', {}, 'Job ', h('code', { text: id }));
      this.status = h('span', { id: 'job-status', class: 'status' });
      this.summary = h('dl', { class: 'summary', id: 'job-summary' });
      this.progress = h('progress', { id: 'job-progress', max: 1, value: 0 });
      this.buttons = {
        pause: h('button', { id: 'pause', type: 'button', onclick: () => this.act('pause') }, 'Pause'),
        resume: h('button', { id: 'resume', type: 'button', onclick: () => this.act('resume') }, 'Resume'),
        cancel: h('button', { id: 'cancel', type: 'button', class: 'danger', onclick: () => this.act('cancel') }, 'Cancel'),
      };
      this.checkpoints = h('tbody', { id: 'checkpoints-body' });
      this.stepSelect = h('select', { id: 'sample-step', onchange: () => {
        this.followLatest = this.stepSelect.selectedIndex === 0;
        this.loadSamples(Number(this.stepSelect.value));
      } });
      this.samples = h('div', { id: 'samples' });
      this.validation = h('div', { id: 'validation' });
      this.perf = h('p', { class: 'muted', id: 'render-time' });
      append(this.el,
        this.title,
        h('div', { class: 'toolbar' }, this.status, this.progress, Object.values(this.buttons)),
        this.summary,
        h('div', { class: 'charts' }, Object.values(this.charts).map((c) => c.el)),
        this.perf,
        h('h2', { text: 'Checkpoints' }),
        h('table', { class: 'list' },
          h('thead', {}, h('tr', {}, ['Checkpoint', 'Step', 'Train reward', 'Validation reward', 'Model'].map((t) => h('th', { text: t })))),
          this.checkpoints),
        h('h2', {}, 'Samples ', this.stepSelect),
        this.samples,
        h('h2', { text: 'Validation answers: first pass and latest' }),
        this.validation);
    }

    live() {
      return !(this.job && FINAL.has(this.job.status) && this.settled);
    }

    async act(action) {
      try {
        const job = await api(`/v1/fine_tuning/jobs/${enc(this.id)}/${action}`, { method: 'POST', body: {} });
        this.job = job;
        this.renderStatus();
        notice(`Job ${action} requested.`);
      } catch (error) {
        failed(error);
      }
    }

    // Events newer than the newest one seen, oldest first: the server sends only those.
    async newEvents() {
      const fresh = [];
      for (;;) {
        const since = this.newestId ? `?since=${enc(this.newestId)}` : '';
        const page = await api(`/dashboard/api/jobs/${enc(this.id)}/events${since}`);
        fresh.push(...page.data);
        if (page.data.length) this.newestId = page.data[page.data.length - 1].id;
        if (!page.has_more || !page.data.length) break;
      }
      metrics.fetches.push(fresh.length);
      return fresh;
    }

    async tick() {
      const [job, fresh] = await Promise.all([
        api(`/v1/fine_tuning/jobs/${enc(this.id)}`),
        this.newEvents(),
      ]);
      const started = performance.now();
      this.job = job;
      let newMetrics = 0;
      let newCheckpoint = !this.checkpointsLoaded;
      for (const event of fresh) {
        if (event.type === 'metrics' && event.data) {
          this.addMetrics(event.data);
          newMetrics += 1;
        } else if (/checkpoint/i.test(event.message || '')) {
          newCheckpoint = true;
        }
        // A collapse warning (or any warning) stays shown until a later one replaces it.
        if (event.level === 'warn') this.warning = event.message;
      }
      const applied = performance.now();
      if (fresh.length || !this.drawn) {
        for (const chart of Object.values(this.charts)) chart.draw();
        this.drawn = true;
      }
      const drawn = performance.now();
      this.renderStatus();
      const ms = performance.now() - started;
      metrics.updates.push({ ms, apply: applied - started, draw: drawn - applied, events: fresh.length, points: this.charts.reward.points() });
      if (fresh.length) this.perf.textContent = `Last update: ${fresh.length} new events drawn in ${ms.toFixed(1)} ms.`;
      if (newCheckpoint || (newMetrics && this.metricsCount % 5 === 0)) await this.loadCheckpoints();
      if (newMetrics || !this.samplesLoaded) await this.loadSampleIndex();
      // A finished job is read once more after its final status, then polling stops.
      this.settled = FINAL.has(job.status) && fresh.length === 0;
    }

    addMetrics(data) {
      const step = data.step;
      const scores = data.scores || {};
      const reward = this.charts.reward;
      this.metricsCount += 1;
      this.totalSteps = data.total_steps || this.totalSteps;
      if (scores.train_reward_mean !== undefined) {
        reward.add('train mean', step, scores.train_reward_mean);
        this.latestTrain = scores.train_reward_mean;
        this.lastStep = Math.max(this.lastStep, step);
      }
      const valid = scores.valid_reward_mean !== undefined ? scores.valid_reward_mean : data.full_valid_mean_reward;
      if (valid !== undefined && valid !== null) {
        reward.add('validation', step, valid);
        this.latestValid = valid;
        // Its standard error: a drop smaller than about twice it is noise.
        this.latestValidError = typeof scores.valid_reward_stderr === 'number' ? scores.valid_reward_stderr : null;
        // One greedy answer per validation row: what the policy says when not sampled.
        if (typeof scores.valid_greedy_reward_mean === 'number') {
          reward.add('validation (greedy)', step, scores.valid_greedy_reward_mean);
        }
      }
      // The step-0 baseline lists validation means per grader; only training steps are drawn.
      if (step > 0) {
        for (const grader of scores.graders || []) {
          if (grader.train_reward_mean !== undefined) reward.add(`grader ${grader.name}`, step, grader.train_reward_mean);
        }
      }
      if (data.entropy !== undefined) {
        this.charts.policy.add('entropy', step, data.entropy);
        this.charts.policy.add('clip fraction', step, data.clip_fraction);
        if (data.kl !== null && data.kl !== undefined) this.charts.policy.add('KL', step, data.kl);
      }
      const timing = data.timing && data.timing.step;
      if (timing) {
        if (timing.sampling > 0) this.charts.speed.add('tokens/s', step, data.completion_tokens_count / timing.sampling);
        this.charts.time.add('step', step, timing.full_iteration);
        this.stepSeconds.push(timing.full_iteration);
      }
    }

    renderStatus() {
      const job = this.job;
      if (!job) return;
      this.status.textContent = job.status;
      this.status.className = `status status-${job.status}`;
      this.buttons.pause.disabled = !['queued', 'running'].includes(job.status);
      this.buttons.resume.disabled = job.status !== 'paused';
      this.buttons.cancel.disabled = FINAL.has(job.status);
      const total = this.totalSteps;
      this.progress.max = Math.max(total, 1);
      this.progress.value = Math.min(this.lastStep, Math.max(total, 1));
      const recent = this.stepSeconds.slice(-20);
      const perStep = recent.length ? recent.reduce((a, b) => a + b, 0) / recent.length : NaN;
      const eta = job.status === 'running' && total ? duration(perStep * (total - this.lastStep)) : '–';
      const rows = [
        ['Step', total ? `${this.lastStep} / ${total}` : '–'],
        ['Train reward', fmt(this.latestTrain)],
        ['Validation reward', this.latestValidError === null ? fmt(this.latestValid) : `${fmt(this.latestValid)} ± ${fmt(this.latestValidError)}`],
        ['ETA', eta],
        ['Model', job.model],
        ['Fine-tuned model', job.fine_tuned_model || '–'],
      ];
      if (job.error) rows.push(['Error', job.error.message]);
      if (this.warning) rows.push(['Warning', this.warning]);
      this.summary.replaceChildren(...rows.flatMap(([k, v]) => [h('dt', { text: k }), h('dd', { text: v })]));
      this.summary.querySelectorAll('dd')[0].id = 'job-step';
      if (this.warning) {
        const dds = this.summary.querySelectorAll('dd');
        dds[dds.length - 1].id = 'job-warning';
        dds[dds.length - 1].className = 'warning';
      }
    }

    async loadCheckpoints() {
      const list = await api(`/v1/fine_tuning/jobs/${enc(this.id)}/checkpoints?limit=100`);
      this.checkpointsLoaded = true;
      this.checkpoints.replaceChildren(...list.data.map((c) => h('tr', { class: 'checkpoint-row' },
        h('td', { text: c.id }),
        h('td', { text: c.step_number }),
        h('td', { text: fmt(c.metrics.train_reward_mean) }),
        h('td', { class: 'valid-reward', text: fmt(c.metrics.valid_reward_mean !== undefined ? c.metrics.valid_reward_mean : c.metrics.full_valid_mean_reward) }),
        h('td', {}, h('code', { text: c.fine_tuned_model_checkpoint })))));
      if (!list.data.length) this.checkpoints.append(h('tr', {}, h('td', { colspan: 5, class: 'muted', text: 'No checkpoint yet (one per validation pass).' })));
    }

    async loadSampleIndex() {
      const index = await api(`/dashboard/api/jobs/${enc(this.id)}/samples`);
      this.samplesLoaded = true;
      const steps = index.steps.slice().reverse();
      if (steps.join() !== this.sampleSteps.join()) {
        this.sampleSteps = steps;
        const chosen = this.samplesStep;
        this.stepSelect.replaceChildren(...steps.map((step, i) => h('option', { value: step, text: i === 0 ? `step ${step} (latest)` : `step ${step}` })));
        if (!this.followLatest && steps.includes(chosen)) this.stepSelect.value = String(chosen);
        const target = this.followLatest ? steps[0] : chosen;
        if (target !== undefined && target !== this.samplesStep) await this.loadSamples(target);
      }
      if (!steps.length) this.samples.replaceChildren(h('p', { class: 'muted', text: 'No samples recorded yet.' }));
      const key = `${index.validation_first}:${index.validation_latest}`;
      if (key !== this.validationKey) {
        this.validationKey = key;
        await this.loadValidation();
      }
    }

    async loadSamples(step) {
      if (!Number.isFinite(step)) return;
      const record = await api(`/dashboard/api/jobs/${enc(this.id)}/samples/${step}`);
      this.samplesStep = step;
      this.sampleRecord = record;
      this.renderSamples();
    }

    renderSamples() {
      const record = this.sampleRecord;
      if (!record) return;
      const groups = record.groups.map((group, gi) => {
        const graders = [...new Set(group.samples.flatMap((x) => Object.keys(x.scores)))].sort();
        const columns = [
          { key: 'index', label: '#', value: (x) => x.index },
          { key: 'reward', label: 'Reward', value: (x) => x.reward },
          ...graders.map((g) => ({ key: `score:${g}`, label: g, value: (x) => x.scores[g] })),
          { key: 'tokens', label: 'Tokens', value: (x) => x.tokens },
        ];
        let rows = group.samples.map((x, i) => Object.assign({ index: i + 1 }, x));
        const sortColumn = columns.find((c) => c.key === this.sort.key);
        if (sortColumn) {
          const sign = this.sort.descending ? -1 : 1;
          rows = rows.slice().sort((a, b) => sign * ((sortColumn.value(a) ?? -Infinity) - (sortColumn.value(b) ?? -Infinity)));
        }
        const head = h('tr', {}, columns.map((c) => h('th', {
          class: 'sortable',
          'data-sort': c.key,
          title: 'Sort',
          onclick: () => {
            this.sort = { key: c.key, descending: this.sort.key === c.key ? !this.sort.descending : true };
            this.renderSamples();
          },
        }, c.label, this.sort.key === c.key ? (this.sort.descending ? ' ▼' : ' ▲') : '')), h('th', { text: 'Finish' }), h('th', { text: 'Completion' }));
        const body = rows.map((x) => h('tr', { class: x.grader_error ? 'sample-row errored' : 'sample-row' },
          columns.map((c) => h('td', { class: c.key === 'reward' ? 'reward num' : 'num', text: fmt(c.value(x)) })),
          h('td', { text: x.finish_reason }),
          h('td', {}, h('pre', { class: 'completion', text: x.text + (x.truncated ? ' […]' : '') }))));
        return h('article', { class: 'sample-group', 'data-group': gi },
          h('h3', { text: `Group ${gi + 1}: mean reward ${fmt(group.reward_mean)} (${group.samples.length} of ${group.group_size} samples shown)` }),
          h('div', { class: 'prompt' }, group.prompt.map((m) => h('div', { class: 'prompt-message' },
            h('span', { class: 'role', text: m.role }),
            h('pre', { class: 'prompt-text', text: m.content + (m.truncated ? ' […]' : '') })))),
          h('table', { class: 'list samples' }, h('thead', {}, head), h('tbody', {}, body)));
      });
      const caption = h('p', { class: 'muted', text: `Step ${record.step}: ${record.groups.length} of ${record.total_groups} groups kept.` });
      this.samples.replaceChildren(caption, ...groups);
    }

    async loadValidation() {
      const v = await api(`/dashboard/api/jobs/${enc(this.id)}/validation`);
      if (!v.first || !v.latest) {
        this.validation.replaceChildren(h('p', { class: 'muted', text: 'No validation pass recorded yet (validation needs a validation file; the first pass runs before step 1).' }));
        return;
      }
      const rows = v.first.rows.map((before, i) => {
        const after = v.latest.rows[i];
        const prompt = before.prompt.length ? before.prompt[before.prompt.length - 1].content : '';
        const a = before.samples[0] || { text: '', reward: null };
        const b = (after && after.samples[0]) || { text: '', reward: null };
        return h('tr', { class: 'validation-row' },
          h('td', {}, h('pre', { class: 'prompt-text', text: prompt })),
          h('td', { class: 'num', text: fmt(a.reward) }),
          h('td', { class: 'num', text: fmt(b.reward) }),
          h('td', {}, h('pre', { class: 'diff' }, diff(a.text, b.text))));
      });
      this.validation.replaceChildren(
        h('p', { class: 'muted', text: `Step ${v.first.step} against step ${v.latest.step}; ${v.first.rows.length} of ${v.first.total_rows} rows kept.` }),
        h('table', { class: 'list' },
          h('thead', {}, h('tr', {}, ['Prompt', `Reward (step ${v.first.step})`, `Reward (step ${v.latest.step})`, 'Answer: removed / added'].map((t) => h('th', { text: t })))),
          h('tbody', {}, rows)));
    }
  }

  // A word diff (longest common subsequence), as text nodes in <del>/<ins>; long answers are
  // compared on their first 600 words.
  function diff(before, after) {
    const a = (before || '').split(/(\s+)/).slice(0, 1200);
    const b = (after || '').split(/(\s+)/).slice(0, 1200);
    const n = a.length, m = b.length;
    const table = Array.from({ length: n + 1 }, () => new Uint16Array(m + 1));
    for (let i = n - 1; i >= 0; i--) {
      for (let j = m - 1; j >= 0; j--) {
        table[i][j] = a[i] === b[j] ? table[i + 1][j + 1] + 1 : Math.max(table[i + 1][j], table[i][j + 1]);
      }
    }
    const out = [];
    let i = 0, j = 0;
    while (i < n && j < m) {
      if (a[i] === b[j]) {
        out.push(document.createTextNode(a[i]));
        i++;
        j++;
      } else if (table[i + 1][j] >= table[i][j + 1]) {
        out.push(h('del', { text: a[i++] }));
      } else {
        out.push(h('ins', { text: b[j++] }));
      }
    }
    while (i < n) out.push(h('del', { text: a[i++] }));
    while (j < m) out.push(h('ins', { text: b[j++] }));
    return out;
  }

  class EvalsView extends Polling {
    constructor() {
      super();
      this.body = h('tbody', { id: 'evals-body' });
      append(this.el, h('h1', { text: 'Evals' }),
        h('table', { class: 'list' }, h('thead', {}, h('tr', {}, ['Eval', 'Name', 'Criteria', 'Created'].map((t) => h('th', { text: t })))), this.body));
    }
    live() {
      return false;
    }
    async tick() {
      const evals = await api('/v1/evals?limit=100');
      this.body.replaceChildren(...evals.data.map((e) => h('tr', {},
        h('td', {}, h('a', { href: `#/evals/${enc(e.id)}`, text: e.id })),
        h('td', { text: e.name || '' }),
        h('td', { text: (e.testing_criteria || []).map((c) => c.name).join(', ') }),
        h('td', { text: when(e.created_at) }))));
      if (!evals.data.length) this.body.append(h('tr', {}, h('td', { colspan: 4, class: 'muted', text: 'No evals yet.' })));
    }
  }

  function passRate(counts) {
    if (!counts || !counts.total) return '–';
    return `${((100 * counts.passed) / counts.total).toFixed(1)}%`;
  }

  class EvalView extends Polling {
    constructor(evalId) {
      super();
      this.evalId = evalId;
      this.body = h('tbody', { id: 'runs-body' });
      append(this.el, h('h1', {}, 'Eval ', h('code', { text: evalId })),
        h('table', { class: 'list' }, h('thead', {}, h('tr', {}, ['Run', 'Name', 'Status', 'Model', 'Pass rate', 'Passed', 'Failed', 'Errored', 'Total'].map((t) => h('th', { text: t })))), this.body));
    }
    async tick() {
      const runs = await api(`/v1/evals/${enc(this.evalId)}/runs?limit=100`);
      this.running = runs.data.some((r) => r.status === 'queued' || r.status === 'in_progress');
      this.body.replaceChildren(...runs.data.map((r) => h('tr', { class: 'run-row' },
        h('td', {}, h('a', { href: `#/evals/${enc(this.evalId)}/runs/${enc(r.id)}`, text: r.id })),
        h('td', { text: r.name || '' }),
        h('td', { text: r.status }),
        h('td', { text: r.model || '' }),
        h('td', { class: 'num pass-rate', text: passRate(r.result_counts) }),
        ['passed', 'failed', 'errored', 'total'].map((k) => h('td', { class: 'num', text: r.result_counts ? r.result_counts[k] : '–' })))));
      if (!runs.data.length) this.body.append(h('tr', {}, h('td', { colspan: 9, class: 'muted', text: 'No runs yet.' })));
    }
    live() {
      return this.running !== false;
    }
  }

  class RunView extends Polling {
    constructor(evalId, runId) {
      super();
      this.evalId = evalId;
      this.runId = runId;
      this.filter = '';
      this.header = h('p', { id: 'run-summary' });
      this.select = h('select', { id: 'item-filter', onchange: () => {
        this.filter = this.select.value;
        this.tick().catch(failed);
      } }, h('option', { value: '', text: 'all items' }), h('option', { value: 'pass', text: 'passed' }), h('option', { value: 'fail', text: 'failed' }));
      this.body = h('tbody', { id: 'items-body' });
      append(this.el, h('h1', {}, 'Run ', h('code', { text: runId })), this.header, h('label', {}, 'Show ', this.select),
        h('table', { class: 'list' }, h('thead', {}, h('tr', {}, ['Row', 'Status', 'Item', 'Answer', 'Scores'].map((t) => h('th', { text: t })))), this.body));
    }
    live() {
      return this.running !== false;
    }
    async tick() {
      const base = `/v1/evals/${enc(this.evalId)}/runs/${enc(this.runId)}`;
      const [run, items] = await Promise.all([
        api(base),
        api(`${base}/output_items?limit=100${this.filter ? `&status=${this.filter}` : ''}`),
      ]);
      this.running = run.status === 'queued' || run.status === 'in_progress';
      const counts = run.result_counts || {};
      this.header.textContent = `${run.status}: pass rate ${passRate(counts)} (${counts.passed || 0} passed, ${counts.failed || 0} failed, ${counts.errored || 0} errored of ${counts.total || 0}).`;
      this.body.replaceChildren(...items.data.map((item) => h('tr', { class: `item-row item-${item.status}` },
        h('td', { class: 'num', text: item.datasource_item_id }),
        h('td', {}, h('span', { class: `status status-${item.status}`, text: item.status })),
        h('td', {}, h('pre', { text: JSON.stringify(item.datasource_item, null, 1) })),
        h('td', {}, h('pre', { class: 'completion', text: ((item.sample && item.sample.output) || []).map((o) => o.content || '').join('\n') })),
        h('td', {}, (item.results || []).map((r) => h('div', { text: `${r.name}: ${fmt(r.score)} ${r.passed ? '✓' : '✗'}` }))))));
      if (!items.data.length) this.body.append(h('tr', {}, h('td', { colspan: 5, class: 'muted', text: 'No items.' })));
    }
  }

  // A one-shot view (forms): no polling.
  class Static {
    constructor() {
      this.el = h('section');
    }
    start() {}
    stop() {}
  }

  function fileOptions(select, purposeFilter) {
    api('/v1/files?limit=100').then((files) => {
      select.replaceChildren(...files.data.filter((f) => !purposeFilter || f.purpose === purposeFilter).map((f) => h('option', { value: f.id, text: `${f.filename} (${f.id})` })));
    }).catch(failed);
  }

  function parseJson(text, what) {
    try {
      return JSON.parse(text);
    } catch (error) {
      throw new Error(`${what} is not valid JSON: ${error.message}`);
    }
  }

  const EXAMPLE_GRADER = JSON.stringify({ type: 'string_check', name: 'exact', operation: 'eq', input: '{{sample.output_text}}', reference: '{{item.answer}}' }, null, 2);

  class ReadinessView extends Static {
    constructor() {
      super();
      this.file = h('select', { id: 'readiness-file' });
      this.model = h('select', { id: 'readiness-model' }, h('option', { value: '', text: '(file holds samples)' }));
      this.grader = h('textarea', { id: 'readiness-grader', rows: 8, spellcheck: 'false' });
      this.grader.value = EXAMPLE_GRADER;
      this.samples = h('input', { id: 'readiness-samples', type: 'number', min: 1, max: 8, value: 4 });
      this.limit = h('input', { id: 'readiness-limit', type: 'number', min: 1, max: 200, value: 50 });
      this.reference = h('input', { id: 'readiness-reference', type: 'text', placeholder: 'e.g. answer' });
      this.out = h('div', { id: 'readiness-report' });
      this.button = h('button', { type: 'submit', id: 'readiness-run' }, 'Build the report');
      const form = h('form', { class: 'form', onsubmit: (e) => {
        e.preventDefault();
        this.run();
      } },
      h('label', {}, 'Dataset or eval rows ', this.file),
      h('label', {}, 'Model ', this.model),
      h('label', {}, 'Samples per row ', this.samples),
      h('label', {}, 'Rows ', this.limit),
      h('label', {}, 'Reference field ', this.reference),
      h('label', { class: 'wide' }, 'Grader (JSON) ', this.grader),
      this.button);
      append(this.el, h('h1', { text: 'Readiness report' }),
        h('p', { class: 'muted', text: 'The checks of `rft doctor`: samples the model on the rows (or grades the samples a file carries) and says whether reinforcement fine-tuning can help.' }),
        form, this.out);
      fileOptions(this.file);
      api('/v1/models').then((models) => {
        for (const m of models.data.filter((m) => !m.id.startsWith('ft:'))) this.model.append(h('option', { value: m.id, text: m.id }));
      }).catch(failed);
    }
    async run() {
      this.button.disabled = true;
      this.out.replaceChildren(h('p', { class: 'muted', text: 'Sampling and grading…' }));
      try {
        const body = {
          file_id: this.file.value,
          grader: parseJson(this.grader.value, 'The grader'),
          samples: Number(this.samples.value),
          limit: Number(this.limit.value),
        };
        if (this.model.value) body.model = this.model.value;
        if (this.reference.value) body.reference_field = this.reference.value;
        const report = await api('/dashboard/api/readiness', { method: 'POST', body });
        this.render(report);
      } catch (error) {
        this.out.replaceChildren();
        failed(error);
      } finally {
        this.button.disabled = false;
      }
    }
    render(report) {
      this.out.replaceChildren(
        h('p', {}, 'Verdict: ', h('span', { id: 'readiness-verdict', class: `verdict verdict-${report.verdict}`, text: report.verdict }),
          ` — ${report.rows} rows × ${report.samples_per_row} samples of ${report.model} on ${report.dataset}, mean reward ${fmt(report.mean_reward)} (${report.errored_samples} errored).`),
        h('table', { class: 'list' }, h('thead', {}, h('tr', {}, ['Check', 'Verdict', 'Why', 'Details'].map((t) => h('th', { text: t })))),
          h('tbody', {}, report.checks.map((c) => h('tr', { class: 'check-row', 'data-check': c.id },
            h('td', { text: c.title }),
            h('td', {}, h('span', { class: `verdict verdict-${c.verdict}`, text: c.applicable ? c.verdict : 'n/a' })),
            h('td', { text: c.reason }),
            h('td', {}, h('details', {}, h('summary', { text: 'data' }), h('pre', { text: JSON.stringify(c.details, null, 1) }))))))));
    }
  }

  class FilesView extends Polling {
    constructor() {
      super();
      this.body = h('tbody', { id: 'files-body' });
      this.input = h('input', { type: 'file', id: 'upload-file' });
      this.purpose = h('select', { id: 'upload-purpose' }, ['fine-tune', 'evals'].map((p) => h('option', { value: p, text: p })));
      const form = h('form', { class: 'form', onsubmit: (e) => {
        e.preventDefault();
        this.upload();
      } }, h('label', {}, 'File ', this.input), h('label', {}, 'Purpose ', this.purpose), h('button', { type: 'submit' }, 'Upload'));
      append(this.el, h('h1', { text: 'Files' }), form,
        h('table', { class: 'list' }, h('thead', {}, h('tr', {}, ['File', 'Name', 'Purpose', 'Bytes', 'Status', 'Details'].map((t) => h('th', { text: t })))), this.body));
    }
    live() {
      return false;
    }
    async upload() {
      const file = this.input.files[0];
      if (!file) return notice('Choose a file first.');
      const form = new FormData();
      form.append('purpose', this.purpose.value);
      form.append('file', file, file.name);
      try {
        const uploaded = await api('/v1/files', { method: 'POST', body: form });
        notice(`Uploaded ${uploaded.filename}: ${uploaded.status}${uploaded.status_details ? ` (${uploaded.status_details})` : ''}`);
        await this.tick();
      } catch (error) {
        failed(error);
      }
    }
    async tick() {
      const files = await api('/v1/files?limit=100');
      this.body.replaceChildren(...files.data.map((f) => h('tr', {},
        h('td', { text: f.id }), h('td', { text: f.filename }), h('td', { text: f.purpose }),
        h('td', { class: 'num', text: f.bytes }), h('td', { text: f.status || '' }), h('td', { text: f.status_details || '' }))));
    }
  }

  class GradersView extends Static {
    constructor() {
      super();
      this.grader = h('textarea', { id: 'grader-json', rows: 10, spellcheck: 'false' });
      this.grader.value = EXAMPLE_GRADER;
      this.item = h('textarea', { id: 'grader-item', rows: 4, spellcheck: 'false' });
      this.item.value = '{"answer": "4"}';
      this.samples = h('textarea', { id: 'grader-samples', rows: 6, spellcheck: 'false', placeholder: 'One sample per block; separate samples with a line holding only ---' });
      this.samples.value = '4\n---\nThe answer is 4.';
      this.out = h('div', { id: 'grader-results' });
      append(this.el, h('h1', { text: 'Graders' }),
        h('div', { class: 'form' },
          h('label', { class: 'wide' }, 'Grader (JSON) ', this.grader),
          h('label', { class: 'wide' }, 'Item (JSON) ', this.item),
          h('label', { class: 'wide' }, 'Samples ', this.samples),
          h('button', { type: 'button', id: 'grader-validate', onclick: () => this.validate() }, 'Validate'),
          h('button', { type: 'button', id: 'grader-run', onclick: () => this.run() }, 'Grade the samples')),
        this.out);
    }
    async validate() {
      try {
        await api('/v1/fine_tuning/alpha/graders/validate', { method: 'POST', body: { grader: parseJson(this.grader.value, 'The grader') } });
        this.out.replaceChildren(h('p', { id: 'grader-valid', class: 'ok', text: 'The grader is valid.' }));
      } catch (error) {
        this.out.replaceChildren(h('p', { id: 'grader-invalid', class: 'bad', text: error.message }));
      }
    }
    async run() {
      try {
        const grader = parseJson(this.grader.value, 'The grader');
        const item = parseJson(this.item.value || '{}', 'The item');
        const samples = this.samples.value.split(/^---$/m).map((x) => x.replace(/^\n|\n$/g, ''));
        const results = [];
        for (const sample of samples) {
          results.push([sample, await api('/v1/fine_tuning/alpha/graders/run', { method: 'POST', body: { grader, item, model_sample: sample } })]);
        }
        this.out.replaceChildren(h('table', { class: 'list' },
          h('thead', {}, h('tr', {}, ['Sample', 'Reward', 'Sub-rewards', 'Errors'].map((t) => h('th', { text: t })))),
          h('tbody', {}, results.map(([sample, r]) => h('tr', { class: 'grade-row' },
            h('td', {}, h('pre', { text: sample })),
            h('td', { class: 'num reward', text: fmt(r.reward) }),
            h('td', { text: Object.entries(r.sub_rewards || {}).map(([k, v]) => `${k}: ${fmt(v)}`).join(', ') }),
            h('td', { text: Object.entries(r.metadata.errors || {}).filter(([, v]) => v === true).map(([k]) => k).join(', ') }))))));
      } catch (error) {
        failed(error);
      }
    }
  }

  // ---------------------------------------------------------------------------------------
  // Routing: #/jobs, #/jobs/ID, #/evals, #/evals/ID, #/evals/ID/runs/RUN, #/readiness,
  // #/files, #/graders.

  function route() {
    const parts = (location.hash.replace(/^#\/?/, '') || 'jobs').split('/').map(decodeURIComponent);
    for (const link of document.querySelectorAll('nav a')) link.classList.toggle('active', link.dataset.nav === parts[0]);
    notice('');
    if (parts[0] === 'jobs' && parts[1]) return setView(new JobView(parts[1]));
    if (parts[0] === 'evals' && parts[1] && parts[2] === 'runs' && parts[3]) return setView(new RunView(parts[1], parts[3]));
    if (parts[0] === 'evals' && parts[1]) return setView(new EvalView(parts[1]));
    if (parts[0] === 'evals') return setView(new EvalsView());
    if (parts[0] === 'readiness') return setView(new ReadinessView());
    if (parts[0] === 'files') return setView(new FilesView());
    if (parts[0] === 'graders') return setView(new GradersView());
    return setView(new JobsView());
  }

  function init() {
    const form = document.getElementById('key-form');
    const input = document.getElementById('api-key');
    input.value = apiKey();
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      if (input.value) sessionStorage.setItem(KEY_STORAGE, input.value.trim());
      else sessionStorage.removeItem(KEY_STORAGE);
      route();
    });
    window.addEventListener('hashchange', route);
    route();
  }

  init();
})();
