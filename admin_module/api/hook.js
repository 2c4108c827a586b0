'use strict';
/*
 * cairn-migrate: the hook.  Installed as <EXTENSIONS_PATH>/hooks/cairn-migrate/index.js.
 *
 * Freeze: while the sidecar says a freeze is active (GET /migrate/freeze, signed), item and file
 * writes are refused with 503.  Filters cover items.create|update|delete and files.create|update|delete;
 * multipart uploads emit no filter event (only the files.upload action), so a small middleware
 * refuses POST/PATCH/DELETE under /files while frozen.  The answer is cached for CACHE_MS, asked with
 * a short timeout, and a sidecar that does not answer means "not frozen": a dead sidecar must never
 * make the instance read-only.
 *
 * Notifications: files.upload and items.create|update|delete are posted to POST /migrate/events,
 * signed, fire-and-forget with a 1 s timeout; failures are logged at debug level and never touch
 * the instance's own request.
 */
const { readConfig, request } = require('./sidecar.js');

const CACHE_MS = 1500;
const FREEZE_TIMEOUT_MS = 800;
const EVENT_TIMEOUT_MS = 1000;
const WRITE_METHODS = new Set(['POST', 'PATCH', 'PUT', 'DELETE']);

module.exports = function registerHook({ filter, action, init }, context) {
	const env = (context && context.env) || process.env;
	const logger = (context && context.logger) || console;
	const exceptions = (context && context.exceptions) || {};

	let cached = { at: 0, state: { active: false } };
	let pending = null;

	async function freezeState() {
		const now = Date.now();
		if (now - cached.at < CACHE_MS) return cached.state;
		if (!pending) {
			pending = request(readConfig(env), 'GET', '/migrate/freeze', undefined, FREEZE_TIMEOUT_MS)
				.then(({ status, json }) => (status === 200 && json && typeof json === 'object' ? json : { active: false }))
				.catch(() => ({ active: false })) // fail open
				.then((state) => {
					cached = { at: Date.now(), state };
					pending = null;
					return state;
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

	// Uploads skip the filters above (FilesService.uploadOne creates the row with emitEvents: false).
	init('routes.before', ({ app }) => {
		app.use('/files', (req, res, next) => {
			if (!WRITE_METHODS.has(req.method)) return next();
			freezeState().then(
				(state) => {
					if (!state || state.active !== true) return next();
					res.status(503).json({ errors: [{ message: frozenMessage(state), extensions: { code: 'SERVICE_UNAVAILABLE' } }] });
				},
				() => next(),
			);
		});
	});

	function notify(event, body) {
		const config = readConfig(env);
		if (!config.secret) return; // not installed by install-extension: nothing to sign with
		request(config, 'POST', '/migrate/events', { event, at: new Date().toISOString(), ...body }, EVENT_TIMEOUT_MS)
			.then(({ status }) => {
				if (status >= 300) logger.debug(`cairn-migrate: sidecar answered ${status} to ${event}`);
			})
			.catch((error) => logger.debug(`cairn-migrate: could not notify the sidecar of ${event}: ${error.message}`));
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
