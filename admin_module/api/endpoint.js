'use strict';
/*
 * cairn-migrate: the endpoint (id "migrate") that proxies /migrate/* of the instance to the sidecar.
 *
 * Installed by `cairn-migrate install-extension` as <EXTENSIONS_PATH>/endpoints/cairn-migrate/index.js,
 * a local file extension that CairnCMS and Directus 9/10 both load (see docs/extension.md).
 *
 * - Only admins pass (req.accountability.admin), checked here: the instance lets anonymous
 *   requests reach extension routes.  GET /migrate/health stays open, like the sidecar's own.
 * - The caller's token goes on to the sidecar, which checks it again against the instance.
 * - Bodies stream both ways (bundles are large).  The instance has already parsed JSON bodies
 *   (express.json runs app-wide), so those are re-serialized; anything else is piped as it comes.
 * - When the sidecar does not answer: 502 {"errors":[{"message":"cairn-migrate sidecar is not reachable at <url>"}]},
 *   its extensions naming the `serve` command (`start`, with the URL's host and port) that starts it there.
 * - GET /migrate/app/vue is answered here, never proxied: the file name of the admin app's own `vue`
 *   chunk, which the admin module import()s (it cannot import 'vue' itself; see docs/extension.md).
 */
const fs = require('fs');
const path = require('path');
const { createRequire } = require('module');
const { readConfig, transportFor } = require('./sidecar.js');

const CONNECT_TIMEOUT_MS = 5000;
/* Hop-by-hop headers (RFC 9110 §7.6.1) and the ones this proxy sets itself. */
const SKIP_REQUEST = new Set(['host', 'connection', 'keep-alive', 'transfer-encoding', 'upgrade', 'te', 'trailer',
	'proxy-authorization', 'proxy-connection', 'authorization', 'cookie', 'content-length', 'expect']);
const SKIP_RESPONSE = new Set(['date', 'server', 'connection', 'keep-alive', 'transfer-encoding', 'upgrade', 'te', 'trailer',
	'proxy-authenticate', 'www-authenticate']);

function errorBody(message, code, extra) {
	return { errors: [{ message, extensions: { code, ...(extra || {}) } }] };
}

function isOpen(req) {
	return req.method === 'GET' && (req.path === '/health' || req.path === '/health/');
}

function refuse(req, res) {
	const accountability = req.accountability || {};
	if (accountability.admin === true) return false;
	if (isOpen(req)) return false;
	if (!accountability.user) {
		res.status(401).json(errorBody('cairn-migrate needs an admin of the instance: log in or send a token', 'INVALID_CREDENTIALS'));
	} else {
		res.status(403).json(errorBody("You don't have permission to access this: cairn-migrate needs an admin of the instance", 'FORBIDDEN'));
	}
	return true;
}

/*
 * The app's `vue` entry chunk: <app package>/dist/assets/vue.<hash>.entry.js, the file the platform itself
 * would map `vue` to for app extensions.  CairnCMS 1.0.0-beta.4 looks for it with an 8-hex-digit hash
 * while its build writes base64url hashes, so it never finds it; any hash is accepted here.
 */
const APP_PACKAGES = ['@cairncms/app', '@directus/app'];
const API_PACKAGES = ['@cairncms/api', '@directus/api'];
const VUE_CHUNK = /^vue\.[A-Za-z0-9_-]+\.entry\.js$/;
let vueChunk = null;

function resolveFrom(start, id) {
	try {
		return createRequire(start).resolve(id);
	} catch (error) {
		return null;
	}
}

/*
 * Where the running instance has its app package: resolved from the script Node started (the CLI of
 * `cairncms`/`directus`), directly (npm's flat node_modules) or through the API package (pnpm's nested
 * ones), then from the working directory.  The extension's own folder is outside that tree.
 */
function appPackageDirs() {
	const starts = [process.argv[1], path.join(process.cwd(), 'package.json')].filter(Boolean).map((start) => {
		try {
			return fs.realpathSync(start);
		} catch (error) {
			return start;
		}
	});
	const dirs = [];
	for (const start of starts) {
		const apis = API_PACKAGES.map((api) => resolveFrom(start, `${api}/package.json`)).filter(Boolean);
		for (const from of [start, ...apis]) {
			for (const app of APP_PACKAGES) {
				const found = resolveFrom(from, `${app}/package.json`);
				if (found) dirs.push(path.dirname(found));
			}
		}
	}
	return dirs;
}

function findVueChunk() {
	if (vueChunk) return vueChunk;
	for (const dir of appPackageDirs()) {
		let files = [];
		try {
			files = fs.readdirSync(path.join(dir, 'dist', 'assets'));
		} catch (error) {
			continue;
		}
		const file = files.find((name) => VUE_CHUNK.test(name));
		if (file) {
			vueChunk = file;
			return file;
		}
	}
	return null;
}

/* Open like health: it names a static file the app serves to anyone at /admin/assets/. */
function sendVueChunk(req, res) {
	const file = findVueChunk();
	res.setHeader('Cache-Control', 'no-store');
	if (!file) {
		res.status(500).json(errorBody("cairn-migrate found no vue chunk of the admin app (dist/assets/vue.<hash>.entry.js of "
			+ `${APP_PACKAGES.join(' or ')}) from ${process.argv[1] || process.cwd()}`, 'APP_VUE_NOT_FOUND', {
			hint: 'start the instance with its own CLI (cairncms start / directus start) so its app package can be resolved',
		}));
		return;
	}
	res.json({ vue: file });
}

function requestBody(req) {
	// express.json() consumed JSON bodies before any extension route runs.
	if (req._body === true || (req.body && typeof req.body === 'object' && Object.keys(req.body).length > 0)) {
		return Buffer.from(JSON.stringify(req.body));
	}
	return null;
}

/*
 * The command that starts the sidecar where this endpoint looks for it.  `serve` listens on 127.0.0.1:8765
 * unless told otherwise, so the host and port of the configured sidecar URL are part of the command.
 */
function serveCommand(url) {
	const target = new URL(url);
	const host = target.hostname.replace(/^\[(.*)\]$/, '$1'); // an IPv6 literal without its brackets
	const port = target.port || (target.protocol === 'https:' ? '443' : '80');
	return `cairn-migrate --env <instance .env> serve --host ${host} --port ${port}`;
}

function proxy(req, res, config) {
	const target = new URL(config.url + '/migrate' + (req.url === '/' ? '' : req.url));
	const headers = {};
	for (const [name, value] of Object.entries(req.headers)) {
		if (!SKIP_REQUEST.has(name.toLowerCase())) headers[name] = value;
	}
	if (req.token) headers.authorization = `Bearer ${req.token}`;
	headers['x-forwarded-for'] = req.ip || '';
	headers['x-forwarded-proto'] = req.protocol;
	const parsed = requestBody(req);
	if (parsed) {
		headers['content-type'] = 'application/json';
		headers['content-length'] = String(parsed.length);
	} else if (req.headers['content-length']) {
		headers['content-length'] = req.headers['content-length'];
	} else if (req.headers['transfer-encoding']) {
		headers['transfer-encoding'] = 'chunked';
	}

	let answered = false;
	const down = (error) => {
		if (answered || res.headersSent) {
			res.destroy(error);
			return;
		}
		answered = true;
		const start = serveCommand(config.url);
		res.status(502).json(errorBody(`cairn-migrate sidecar is not reachable at ${config.url}`, 'SIDECAR_UNREACHABLE', {
			reason: String((error && error.code) || (error && error.message) || error),
			start,
			hint: `start it with: ${start}, or fix sidecar_url in ` +
				'<EXTENSIONS_PATH>/.cairn-migrate.json (cairn-migrate install-extension --sidecar-url URL)',
		}));
	};

	const upstream = transportFor(target).request(target, { method: req.method, headers }, (upstreamRes) => {
		answered = true;
		const outHeaders = {};
		for (const [name, value] of Object.entries(upstreamRes.headers)) {
			if (!SKIP_RESPONSE.has(name.toLowerCase())) outHeaders[name] = value;
		}
		res.writeHead(upstreamRes.statusCode || 502, outHeaders);
		upstreamRes.pipe(res);
		upstreamRes.on('error', (error) => res.destroy(error));
	});
	// Only the connection is bounded: a bundle download or upload may take as long as it takes.
	const connectTimer = setTimeout(() => upstream.destroy(Object.assign(new Error('connect timeout'), { code: 'ETIMEDOUT' })),
		CONNECT_TIMEOUT_MS);
	upstream.on('socket', (socket) => {
		if (!socket.connecting) clearTimeout(connectTimer);
		socket.once('connect', () => clearTimeout(connectTimer));
	});
	upstream.on('error', (error) => {
		clearTimeout(connectTimer);
		down(error);
	});
	upstream.on('close', () => clearTimeout(connectTimer));
	res.on('close', () => {
		if (!res.writableFinished) upstream.destroy();
	});

	if (parsed) {
		upstream.end(parsed);
	} else if (req.readableEnded) {
		upstream.end();
	} else {
		req.pipe(upstream);
		req.on('error', (error) => upstream.destroy(error));
	}
}

module.exports = {
	id: 'migrate',
	handler: (router, context) => {
		const env = (context && context.env) || process.env;
		router.get('/app/vue', sendVueChunk);
		router.use((req, res) => {
			if (refuse(req, res)) return;
			proxy(req, res, readConfig(env));
		});
	},
};
