'use strict';
/*
 * cairn-migrate: the hook.  Installed as <EXTENSIONS_PATH>/hooks/cairn-migrate/index.js.
 *
 * Freeze: while the sidecar says a freeze is active (GET /migrate/freeze, signed), item and file
 * writes are refused with 503.  Filters cover items.create|update|delete and files.create|update|delete;
 * multipart uploads emit no filter event (only the files.upload action), so a small middleware
 * refuses POST/PATCH/DELETE under /files while frozen.  The answer is cached for CACHE_MS and asked
 * with a short timeout.  When the sidecar does not answer, the last active freeze it reported still
 * holds until its expiry (fail closed: an export renews a short expiry while it runs, so a crashed
 * export or a dead sidecar frees the instance within a minute); with no freeze known, writes go through.
 *
 * Freeze proof: GET /migrate/freeze-proof/<freeze id>, signed by the export with the shared secret,
 * asks the sidecar afresh and answers, signed (method "RESPONSE"), whether this hook now enforces that
 * freeze, and how long an answer asked before it may still be acted on (wait_ms: the cache plus the
 * timeout of a request in flight).  The export captures only after a 200 from here and waiting out wait_ms.
 *
 * Notifications: files.upload and items.create|update|delete are posted to POST /migrate/events,
 * signed, fire-and-forget with a 1 s timeout; failures are logged at debug level and never touch
 * the instance's own request.  They are batched: queued, one event per run of the same change
 * (a createMany of 100 items is one items.create with 100 keys), and sent at most every FLUSH_MS
 * as one request ({events: [...]}), one request in flight.  One request per item cost the server
 * about 0.5 ms of CPU per item and the sidecar a request each: a fifth of a bulk write's rate.
 */
const { readConfig, request, signedHeaders, verifySignature } = require('./sidecar.js');

const CACHE_MS = 1500;
const FREEZE_TIMEOUT_MS = 800;
const EVENT_TIMEOUT_MS = 1000;
const FLUSH_MS = 250; // the longest an event waits for its batch
const BATCH_EVENTS = 100; // events per request (the sidecar takes up to 200)
const EVENT_KEYS = 100; // keys per event (the sidecar keeps up to 100)
const QUEUE_EVENTS = 1000; // events waiting at most: beyond it the oldest are dropped (a feed, not a ledger)
const WRITE_METHODS = new Set(['POST', 'PATCH', 'PUT', 'DELETE']);
const PROOF_PATH = '/migrate/freeze-proof/';

module.exports = function registerHook({ filter, action, init }, context) {
	const env = (context && context.env) || process.env;
	const logger = (context && context.logger) || console;
	const exceptions = (context && context.exceptions) || {};

	// `at` is when the answer was asked for: an answer asked earlier never replaces a newer one.
	let cached = { at: 0, state: { active: false } };
	let known = null; // the last active freeze the sidecar reported: {id, reason, until (ms)}
	let pending = null;

	function apply(askedAt, state) {
		if (askedAt < cached.at) return state;
		cached = { at: askedAt, state };
		if (state.active === true && !state.unreachable) known = { id: state.id, reason: state.reason, until: Date.parse(state.until) };
		else if (state.active !== true) known = null;
		return state;
	}

	// The sidecar did not answer (or not with a freeze state): a freeze it reported holds until its expiry.
	function unreachable(why) {
		if (known && Date.now() < known.until) {
			return { active: true, id: known.id, reason: known.reason, until: new Date(known.until).toISOString(), unreachable: why };
		}
		return { active: false, unreachable: why };
	}

	function askSidecar() {
		const askedAt = Date.now();
		return request(readConfig(env), 'GET', '/migrate/freeze', undefined, FREEZE_TIMEOUT_MS)
			.then(({ status, json }) => (status === 200 && json && typeof json === 'object' ? json : unreachable(`the sidecar answered ${status}`)))
			.catch((error) => unreachable(error.message))
			.then((state) => apply(askedAt, state));
	}

	async function freezeState() {
		if (Date.now() - cached.at < CACHE_MS) return cached.state;
		if (!pending) {
			pending = askSidecar().finally(() => {
				pending = null;
			});
		}
		return pending;
	}

	function frozenMessage(state) {
		const reason = state.reason ? `: ${state.reason}` : '';
		return `Writes are held by cairn-migrate while a migration runs${reason}. Try again in a moment.`;
	}

	function frozenError(state) {
		const message = frozenMessage(state);
		if (exceptions.ServiceUnavailableException) {
			return new exceptions.ServiceUnavailableException(message, { service: 'cairn-migrate', freeze: true });
		}
		if (exceptions.BaseException) return new exceptions.BaseException(message, 503, 'SERVICE_UNAVAILABLE');
		return Object.assign(new Error(message), { status: 503, code: 'SERVICE_UNAVAILABLE' });
	}

	const refuseWhileFrozen = async (payload) => {
		const state = await freezeState();
		if (state && state.active === true) throw frozenError(state);
		return payload;
	};

	for (const event of ['items.create', 'items.update', 'items.delete', 'files.create', 'files.update', 'files.delete']) {
		filter(event, refuseWhileFrozen);
	}

	async function proveFreeze(req, res) {
		const config = readConfig(env);
		const urlPath = PROOF_PATH + req.params.id;
		if (!verifySignature(config.secret, 'GET', urlPath, null, req.headers)) {
			res.status(401).json({ errors: [{ message: 'cairn-migrate: the freeze proof request is not signed with this instance\'s secret',
				extensions: { code: 'INVALID_SIGNATURE', hint: 're-run cairn-migrate install-extension and restart the instance' } }] });
			return;
		}
		const state = await askSidecar();
		const enforced = state.active === true && state.id === req.params.id && !state.unreachable;
		const body = Buffer.from(JSON.stringify({
			freeze_id: req.params.id, enforced, wait_ms: CACHE_MS + FREEZE_TIMEOUT_MS, sidecar_url: config.url,
			seen: { active: state.active === true, id: state.id || null, unreachable: state.unreachable || null },
		}));
		res.status(enforced ? 200 : 409).set({ 'Content-Type': 'application/json', ...signedHeaders(config.secret, 'RESPONSE', urlPath, body) });
		res.end(body);
	}

	init('routes.before', ({ app }) => {
		app.get(PROOF_PATH + ':id', (req, res, next) => proveFreeze(req, res).catch(next));
		// Uploads skip the filters above (FilesService.uploadOne creates the row with emitEvents: false).
		app.use('/files', (req, res, next) => {
			if (!WRITE_METHODS.has(req.method)) return next();
			freezeState().then(
				(state) => {
					if (!state || state.active !== true) return next();
					res.status(503).json({ errors: [{ message: frozenMessage(state), extensions: { code: 'SERVICE_UNAVAILABLE' } }] });
				},
				next,
			);
		});
	});

	let queue = [];
	let timer = null;
	let sending = false;
	let dropped = 0;

	// Send the queue, one request at a time; what comes meanwhile waits for the next.
	function flush() {
		timer = null;
		if (sending || queue.length === 0) return;
		const config = readConfig(env);
		if (!config.secret) {
			queue = []; // not installed by install-extension: nothing to sign with
			return;
		}
		const events = queue.splice(0, BATCH_EVENTS);
		sending = true;
		request(config, 'POST', '/migrate/events', { events }, EVENT_TIMEOUT_MS)
			.then(({ status }) => {
				if (status >= 300) logger.debug(`cairn-migrate: sidecar answered ${status} to ${events.length} events`);
			})
			.catch((error) => logger.debug(`cairn-migrate: could not notify the sidecar of ${events.length} events: ${error.message}`))
			.finally(() => {
				sending = false;
				if (dropped) {
					logger.debug(`cairn-migrate: ${dropped} events dropped (the sidecar was slower than the writes)`);
					dropped = 0;
				}
				if (queue.length) schedule(queue.length >= BATCH_EVENTS ? 0 : FLUSH_MS);
			});
	}

	function schedule(ms) {
		if (timer && ms > 0) return;
		if (timer) clearTimeout(timer); // a full batch goes now
		timer = setTimeout(flush, ms);
		if (timer.unref) timer.unref(); // never what keeps the instance's process alive
	}

	function notify(event, body) {
		const last = queue[queue.length - 1];
		// the same change of the same collection by the same user: one event with the keys of all
		if (last && !body.file && !last.file && last.event === event && last.collection === body.collection
			&& last.user === body.user && last.keys.length + body.keys.length <= EVENT_KEYS) {
			last.keys.push(...body.keys);
		} else {
			queue.push({ event, at: new Date().toISOString(), ...body, keys: [...body.keys] });
			if (queue.length > QUEUE_EVENTS) dropped += queue.splice(0, queue.length - QUEUE_EVENTS).length;
		}
		schedule(queue.length >= BATCH_EVENTS ? 0 : FLUSH_MS);
	}

	const user = (ctx) => (ctx && ctx.accountability && ctx.accountability.user) || null;

	action('files.upload', (meta, ctx) => {
		const payload = meta.payload || {};
		notify('files.upload', {
			collection: meta.collection || 'directus_files',
			keys: [meta.key],
			user: user(ctx),
			file: {
				storage: payload.storage || null,
				filename_disk: payload.filename_disk || null,
				filename_download: payload.filename_download || null,
				type: payload.type || null,
				filesize: payload.filesize === undefined ? null : payload.filesize,
			},
		});
	});

	for (const event of ['items.create', 'items.update', 'items.delete']) {
		action(event, (meta, ctx) => {
			const keys = meta.keys || (meta.key === undefined ? (Array.isArray(meta.payload) ? meta.payload : []) : [meta.key]);
			notify(event, { collection: meta.collection, keys, user: user(ctx) });
		});
	}
};
