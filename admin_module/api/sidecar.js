'use strict';
/*
 * cairn-migrate: what the endpoint and the hook share (CommonJS, Node >= 16, no dependencies).
 *
 * - readConfig(): the config install-extension wrote to <EXTENSIONS_PATH>/.cairn-migrate.json
 *   ({sidecar_url, secret}); CAIRN_MIGRATE_SIDECAR_URL in the instance's environment overrides the URL.
 * - signedHeaders(): the HMAC-SHA256 signature the sidecar checks on /migrate/events and /migrate/freeze
 *   (and the hook puts on its freeze proofs); verifySignature(): the hook's check of a signed request.
 * - request(): one small HTTP call with a hard timeout (used by the hook; the proxy streams itself).
 */
const crypto = require('crypto');
const fs = require('fs');
const http = require('http');
const https = require('https');
const path = require('path');

const CONFIG_NAME = '.cairn-migrate.json';
const DEFAULT_URL = 'http://127.0.0.1:8765';
/* How far a signed request's timestamp may be from now (MAX_SKEW in extension/service/signature.py). */
const MAX_SKEW_S = 300;

/* This file is installed as <EXTENSIONS_PATH>/<endpoints|hooks>/cairn-migrate/sidecar.js. */
function configPath(env) {
	if (env && env.EXTENSIONS_PATH) return path.resolve(String(env.EXTENSIONS_PATH), CONFIG_NAME);
	return path.resolve(__dirname, '..', '..', CONFIG_NAME);
}

function readConfig(env) {
	let config = {};
	try {
		config = JSON.parse(fs.readFileSync(configPath(env), 'utf8'));
	} catch (error) {
		config = {};
	}
	const override = (env && env.CAIRN_MIGRATE_SIDECAR_URL) || process.env.CAIRN_MIGRATE_SIDECAR_URL;
	const url = String(override || config.sidecar_url || DEFAULT_URL).replace(/\/+$/, '');
	return { url, secret: config.secret ? String(config.secret) : null };
}

/*
 * The signature: hex HMAC-SHA256, keyed with the shared secret, of
 *   "<unix seconds>\n<METHOD>\n<path>\n" + body bytes
 * sent as X-Cairn-Migrate-Timestamp and X-Cairn-Migrate-Signature: sha256=<hex>.
 * The sidecar accepts a timestamp within 300 s of its own clock.
 */
function mac(secret, timestamp, method, urlPath, body) {
	const hmac = crypto.createHmac('sha256', secret);
	hmac.update(`${timestamp}\n${method.toUpperCase()}\n${urlPath}\n`);
	if (body) hmac.update(body);
	return `sha256=${hmac.digest('hex')}`;
}

function signedHeaders(secret, method, urlPath, body) {
	if (!secret) return {};
	const timestamp = String(Math.floor(Date.now() / 1000));
	return {
		'X-Cairn-Migrate-Timestamp': timestamp,
		'X-Cairn-Migrate-Signature': mac(secret, timestamp, method, urlPath, body),
	};
}

/* Whether a request (Node's lower-cased headers) carries a valid, fresh signature made with `secret`. */
function verifySignature(secret, method, urlPath, body, headers) {
	if (!secret) return false;
	const timestamp = String(headers['x-cairn-migrate-timestamp'] || '');
	const signature = Buffer.from(String(headers['x-cairn-migrate-signature'] || ''));
	if (!/^[0-9]+$/.test(timestamp) || Math.abs(Date.now() / 1000 - Number(timestamp)) > MAX_SKEW_S) return false;
	const expected = Buffer.from(mac(secret, timestamp, method, urlPath, body));
	return expected.length === signature.length && crypto.timingSafeEqual(expected, signature);
}

function transportFor(url) {
	return url.protocol === 'https:' ? https : http;
}

/* One bounded call: resolves {status, json} or rejects (network error or timeout). Never hangs. */
function request(config, method, urlPath, body, timeoutMs) {
	return new Promise((resolve, reject) => {
		const target = new URL(config.url + urlPath);
		const data = body === undefined ? null : Buffer.from(JSON.stringify(body));
		const headers = { Accept: 'application/json', ...signedHeaders(config.secret, method, target.pathname, data) };
		if (data) {
			headers['Content-Type'] = 'application/json';
			headers['Content-Length'] = String(data.length);
		}
		const req = transportFor(target).request(target, { method, headers, timeout: timeoutMs }, (res) => {
			const chunks = [];
			res.on('data', (chunk) => chunks.push(chunk));
			res.on('end', () => {
				clearTimeout(timer);
				let json = null;
				try {
					json = JSON.parse(Buffer.concat(chunks).toString('utf8'));
				} catch (error) {
					json = null;
				}
				resolve({ status: res.statusCode, json });
			});
			res.on('error', reject);
		});
		// `timeout` above only covers socket idleness; this bounds the whole call.
		const timer = setTimeout(() => req.destroy(new Error(`timed out after ${timeoutMs} ms`)), timeoutMs);
		req.on('timeout', () => req.destroy(new Error(`timed out after ${timeoutMs} ms`)));
		req.on('error', (error) => {
			clearTimeout(timer);
			reject(error);
		});
		if (data) req.write(data);
		req.end();
	});
}

module.exports = { CONFIG_NAME, readConfig, signedHeaders, verifySignature, request, transportFor };
