/*
 * cairn-migrate: the admin-app module (id "migrate", admins only), at /admin/migrate.
 *
 * Installed as <EXTENSIONS_PATH>/modules/cairn-migrate/index.js.  The instance bundles it with rollup
 * when it starts.  It imports nothing: CairnCMS 1.0.0-beta.4 cannot map `vue` (or any shared package)
 * for app extensions, and an extension that imports one fails to load at all (docs/extension.md).
 * So the route component is an async loader: it asks the instance's /migrate endpoint for the file
 * name of the app's own `vue` chunk (/admin/assets/vue.<hash>.entry.js) and import()s it.  That chunk
 * re-exports the runtime the app already runs, so h(), resolveComponent() and inject() are the app's:
 * the authenticated axios client comes from inject('api') (what useApi() returns) and the page chrome
 * from the app's globally registered components (<private-view>, <v-button>, <v-notice>).
 * No templates (the app ships Vue's runtime-only build): render functions with h().
 *
 * Everything else goes through the instance's /migrate endpoint, which proxies to the sidecar; the two
 * exceptions ask the instance itself: promote's check that it has /schema/* and /config/*, and its own
 * collections (GET /collections) for the content move's and the sync form's pickers.
 */

/* The app's Vue, bound by loadPage() before the page's setup() first runs. */
let computed, h, inject, onMounted, onUnmounted, reactive, ref, resolveComponent;

const FINAL = ['succeeded', 'failed', 'cancelled'];
const POLL_MS = 1000;
/* The actions, each with its own job panel and its own polling; "jobs" shows a past job picked from the list. */
const PANELS = ['export', 'import', 'files', 'promote', 'content', 'sync', 'jobs'];
const FILES_CHECK_KINDS = ['files_check', 'files-check'];
const REPLACE_LABEL = 'Replace a non-empty instance';
/* What an import's panel says while a poll fails: a replace recreates the tables the instance answers from. */
const RESTARTING = 'Instance restarting its tables… (asking again)';
/* What promote can carry, in the order of its --only; every one ticked by default. */
const PROMOTE_KINDS = ['schema', 'config', 'flows', 'dashboards', 'presets', 'settings', 'translations'];
/* The target's API promote plans, applies and writes its safety snapshot through (CairnCMS's own). */
const PROMOTE_API = ['/schema/snapshot', '/config/snapshot'];
const HEALTH_MS = 10000;
/* content move's modes (its --mode) and a sync profile's conflict policies. */
const CONTENT_MODES = ['merge', 'skip-existing', 'mirror'];
const SYNC_CONFLICTS = ['source-wins', 'target-wins', 'skip-if-target-modified'];
/* The built-in masking profiles (masking/profiles.py); a content move also takes a YAML profile's path. */
const MASK_PROFILES = ['pii-basic'];
/* The columns of a content plan, in the order the CLI prints them. */
const COUNT_KINDS = ['created', 'updated', 'unchanged', 'skipped', 'deleted'];
const HISTORY_LIMIT = 10;
const LOAD_TIMEOUT_MS = 15000;

const css = {
	page: 'padding: var(--content-padding, 32px); padding-top: 0; max-width: 1000px;',
	section: 'margin-bottom: 40px;',
	heading: 'font-size: 18px; font-weight: 600; margin: 0 0 12px;',
	row: 'display: flex; gap: 16px; align-items: center; flex-wrap: wrap; margin-bottom: 12px;',
	label: 'display: flex; gap: 8px; align-items: center;',
	input: 'padding: 8px 12px; border: var(--border-width, 2px) solid var(--border-normal, #d3dae4); border-radius: var(--border-radius, 6px); background: var(--background-input, #fff); color: var(--foreground-normal, #172940); font: inherit;',
	bar: 'height: 8px; background: var(--background-normal-alt, #e4eaf1); border-radius: 4px; overflow: hidden; margin: 8px 0;',
	fill: 'height: 100%; background: var(--primary, #6644ff); transition: width .3s;',
	pre: 'background: var(--background-subdued, #f5f7f9); padding: 12px; border-radius: 6px; max-height: 320px; overflow: auto; font-family: var(--family-monospace, monospace); font-size: 13px; white-space: pre-wrap;',
	table: 'width: 100%; border-collapse: collapse;',
	cell: 'text-align: left; padding: 6px 8px; border-bottom: 1px solid var(--border-subdued, #f0f4f9);',
	muted: 'color: var(--foreground-subdued, #a2b5cd);',
	link: 'color: var(--primary, #6644ff); cursor: pointer; text-decoration: underline;',
};

/*
 * The sidecar's hints speak to the command line.  A refused import says "pass --replace …, or --resume …";
 * on this page replacing is the "Replace" box, and resuming an interrupted import is done with the CLI.
 * A move or sync from another instance refused over HTTP (403) names CAIRN_MIGRATE_PEERS or an admin token;
 * the sync form has no token field for the other side (the content move form has one for a source given by URL),
 * so the operator's setting comes first.
 */
function pageHint(message, hint) {
	if (hint && hint.includes('CAIRN_MIGRATE_PEERS')) {
		/* Confinement (403): Promote and a content move from a URL take a token for another instance; elsewhere the operator consents. */
		return 'ask the sidecar\'s operator to add that instance\'s .env (its absolute path) to CAIRN_MIGRATE_PEERS '
			+ 'in the sidecar\'s environment and restart the sidecar (for Promote or a content move from a URL, a source admin token of that '
			+ 'instance also proves it)';
	}
	if (!hint || !hint.includes('pass --replace')) return hint;
	const resume = /interrupted import/.test(message)
		? '; to finish the interrupted import instead, run cairn-migrate import <bundle> --resume on the sidecar\'s machine'
		: '';
	return `tick “${REPLACE_LABEL}” to overwrite it (a safety bundle of it is written first), `
		+ `or import into an empty instance${resume}`;
}

function errorMessage(error) {
	const data = error && error.response && error.response.data;
	if (data && Array.isArray(data.errors) && data.errors[0]) return data.errors[0].message;
	if (data && data.error && data.error.message) {
		const hint = pageHint(data.error.message, data.error.hint);
		return data.error.message + (hint ? ` (${hint})` : '');
	}
	return (error && error.message) || String(error);
}

/* The command the instance's endpoint says starts the sidecar where it looks for it (its 502 answer), or ''. */
function startCommand(error) {
	const data = error && error.response && error.response.data;
	const first = data && Array.isArray(data.errors) && data.errors[0];
	return (first && first.extensions && first.extensions.start) || '';
}

function formatBytes(n) {
	if (n === null || n === undefined) return '';
	const units = ['B', 'KB', 'MB', 'GB', 'TB'];
	let i = 0;
	let value = Number(n);
	while (value >= 1024 && i < units.length - 1) {
		value /= 1024;
		i += 1;
	}
	return `${value.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

/* This instance's own URL as the sidecar reaches it: the app is served at <PUBLIC_URL>/admin/. */
function instanceUrl() {
	return new URL('..', document.baseURI).href.replace(/\/$/, '');
}

/* A refusal's fix speaks to the command line; on this page its options are the boxes of the section. */
function promoteFix(fix) {
	return String(fix || '')
		.replace(/ \((allow_data_loss|force)\)/g, '')  // the HTTP parameter's name beside the CLI option
		.replace('pass --allow-data-loss', 'tick \u201cAllow data loss\u201d')
		.replace('pass --force', 'tick \u201cForce across vendors or versions\u201d')
		.replace('pass --destructive', 'tick \u201cDestructive\u201d');
}

/* A count of what a plan part lists (an array of names, or already a number). */
function count(value) {
	if (Array.isArray(value)) return value.length;
	return Number(value) || 0;
}

/* One line per part of a promote plan: schema steps, roles and permissions, extras with their counts. */
function promoteLines(report) {
	const lines = [];
	const schema = report.schema;
	if (schema) {
		if (schema.changes) lines.push(`schema: ${schema.steps.length} changes`, ...schema.steps.map((s) => `  ${s}`));
		else lines.push('schema: no changes');
		(schema.data_loss || []).forEach((loss) => lines.push(`  drops ${loss.kind} ${loss.name} holding ${loss.rows ?? 'an unknown number of'} rows`));
	}
	const config = report.config;
	if (config && config.plan) {
		const { roles, permissions } = config.plan;
		lines.push(`config: roles ${count(roles.created)} to create, ${count(roles.updated)} to update; `
			+ `permissions ${count(permissions.created)} to create, ${count(permissions.updated)} to update`
			+ (count(permissions.deleted) ? `, ${count(permissions.deleted)} to delete` : ''));
		(roles.deleted || []).forEach((key) => lines.push(`  - role ${key} (its permissions and presets deleted, its users suspended)`));
		const kept = config.kept || {};
		[...(kept.roles || []).map((k) => `role ${k}`), ...(kept.permissions || []).map((k) => `permission ${k}`)]
			.forEach((name) => lines.push(`  kept (target only): ${name}`));
	} else if (config) {
		lines.push('config: not planned');
	}
	const extras = report.extras || {};
	if (extras.skipped) lines.push(`extras: ${extras.skipped}`);
	Object.entries(extras).filter(([, v]) => v && v.counts).forEach(([kind, v]) => {
		lines.push(`${kind}: ${v.counts.create} to create, ${v.counts.update} to update, ${v.counts.unchanged} unchanged`);
		[...(v.delete || []).map((n) => `  - ${n}`), ...v.create.map((n) => `  + ${n}`), ...v.update.map((n) => `  ~ ${n}`),
			...(v.kept || []).map((n) => `  kept (target only): ${n}`)].forEach((l) => lines.push(l));
		(v.secrets_left_out || []).forEach((n) => lines.push(`  secret not copied: ${n}`));
	});
	return lines;
}

/* A content move's refusal fix speaks to the command line; on this page its options are the section's fields. */
function contentFix(fix) {
	const text = String(fix || '');
	if (/cairn-migrate promote/.test(text)) {
		return 'promote the structure first (the \u201cPromote structure\u201d section: the source instance\u2019s URL into this one), then plan again';
	}
	return text
		.replace('pass --max-delete N (the most rows it may delete)', 'fill in \u201cMax delete\u201d (the most target rows the mirror may delete)')
		.replace('raise --max-delete', 'raise \u201cMax delete\u201d');
}

/* The counts of one collection as a line: "2 created, 0 updated, …". */
function countsLine(counts) {
	return COUNT_KINDS.map((kind) => `${(counts && counts[kind]) || 0} ${kind}`).join(', ');
}

/*
 * A sync run's counts, one line per synced collection: the non-zero counts of each collection its content step
 * wrote (its related collections too), or "no changes" (the step's plan is all zeros, or {changed: 0}).
 */
function syncCountLines(counts) {
	return Object.entries(counts || {}).map(([collection, plan]) => {
		const parts = Object.entries(plan || {})
			.filter(([, c]) => c && typeof c === 'object')
			.map(([name, c]) => [name, COUNT_KINDS.filter((kind) => c[kind]).map((kind) => `${c[kind]} ${kind}`)])
			.filter(([, kinds]) => kinds.length)
			.map(([name, kinds]) => `${name === collection ? '' : `${name} `}${kinds.join(', ')}`);
		return `${collection}: ${parts.length ? parts.join('; ') : 'no changes'}`;
	});
}

function scheduleText(schedule) {
	if (!schedule || (!schedule.cron && !schedule.interval_seconds)) return 'only when run';
	if (schedule.cron) return `cron ${schedule.cron} (${schedule.timezone || 'UTC'})`;
	return `every ${schedule.interval_seconds} s`;
}

/* The text of a JSON field: {value} (undefined when empty) or {error}. */
function parseJsonField(text, label) {
	const trimmed = String(text || '').trim();
	if (!trimmed) return { value: undefined };
	try {
		const value = JSON.parse(trimmed);
		if (!value || typeof value !== 'object' || Array.isArray(value)) return { error: `${label} must be a JSON object` };
		return { value };
	} catch (error) {
		return { error: `${label} is not JSON: ${error.message}` };
	}
}

/* The text of a number field: undefined when empty, else a whole number >= 0 (NaN when not). */
function wholeNumber(text) {
	const trimmed = String(text ?? '').trim();
	if (!trimmed) return undefined;
	return /^\d+$/.test(trimmed) ? Number(trimmed) : NaN;
}

function formatRate(progress) {
	if (!progress) return '';
	const parts = [];
	if (progress.rate_items_per_s) parts.push(`${Number(progress.rate_items_per_s).toFixed(1)} items/s`);
	if (progress.rate_bytes_per_s) parts.push(`${formatBytes(progress.rate_bytes_per_s)}/s`);
	return parts.join(', ');
}

function percent(progress) {
	if (!progress) return null;
	if (progress.bytes_total) return Math.min(100, Math.round((100 * progress.bytes_done) / progress.bytes_total));
	if (progress.items_total) return Math.min(100, Math.round((100 * progress.items_done) / progress.items_total));
	return null;
}

const MigratePage = {
	name: 'CairnMigratePage',
	setup() {
		const api = inject('api');
		const sidecar = reactive({ state: 'checking', message: '', start: '', version: '' });
		const exportForm = reactive({ freeze: false, passphrase: '' });
		const importForm = reactive({ source: '', file: null, replace: false, passphrase: '' });
		// Per action: the job it follows, an error (starting or polling it) and a passing note (RESTARTING).
		const panels = Object.fromEntries(PANELS.map((name) => [name, reactive({ job: null, error: '', note: '' })]));
		const polls = {}; // panel name -> { timer } of the poll that owns the panel; a replaced poll stops
		const listsError = ref('');
		const jobs = ref([]);
		const bundles = ref([]);
		const plan = ref(null);
		const planBundle = ref('');
		const planError = ref('');
		const busy = ref('');
		const filesReport = ref(null);
		const filesMessage = ref('');
		const promoteForm = reactive({ from: '', fromToken: '', allowDataLoss: false, force: false, destructive: false,
			only: Object.fromEntries(PROMOTE_KINDS.map((kind) => [kind, true])) });
		const promotePlan = ref(null);
		const promoteError = ref('');
		const promoteMissing = ref([]); // the PROMOTE_API paths this instance answers 404 to (Directus 9.22.4: both)
		// Content moves and syncs name .env files on the sidecar's machine: the folders allowed for that, this instance's.
		const paths = reactive({ loaded: false, allowed: [], env: null, envOutside: false, error: '' });
		const collections = ref([]); // this instance's user collections (its own GET /collections)
		const contentForm = reactive({ from: '', fromToken: '', to: '', via: 'db', toToken: '', collections: {}, filter: '', depth: '', mode: 'merge', maxDelete: '', mask: '' });
		const contentPlan = ref(null);
		const contentError = ref('');
		const syncs = ref([]);
		const syncsError = ref('');
		const syncForm = reactive({ name: '', source: '', target: '', collections: {}, filter: '', mode: 'merge', maxDelete: '',
			conflict: 'source-wins', cron: '', interval: '', timezone: 'UTC', mask: '' });
		const syncFormError = ref('');
		const history = reactive({ name: '', runs: [], error: '' });
		const confirmRemove = ref(''); // the profile whose "Remove" asks to be confirmed
		let healthTimer = null;

		const down = computed(() => sidecar.state === 'down');

		function token() {
			const header = api.defaults && api.defaults.headers && api.defaults.headers.common && api.defaults.headers.common.Authorization;
			return header ? String(header).replace(/^Bearer\s+/i, '') : '';
		}

		function noteDown(error) {
			sidecar.state = 'down';
			sidecar.message = errorMessage(error);
			sidecar.start = startCommand(error);
		}

		function noteFailure(error) {
			const status = error && error.response && error.response.status;
			if (status === 502 || !error.response) noteDown(error);
		}

		async function call(config) {
			try {
				const response = await api.request(config);
				if (sidecar.state !== 'up' && config.url !== '/migrate/health') checkHealth();
				return response;
			} catch (error) {
				noteFailure(error);
				throw error;
			}
		}

		async function checkHealth() {
			try {
				const { data } = await api.get('/migrate/health');
				const wasDown = sidecar.state !== 'up';
				sidecar.state = 'up';
				sidecar.message = '';
				sidecar.version = data.version || '';
				if (wasDown) {
					refreshLists();
					refreshSyncs();
					loadPaths();
				}
			} catch (error) {
				noteDown(error);
			}
		}

		async function refreshLists() {
			try {
				const [jobList, bundleList] = await Promise.all([
					call({ method: 'get', url: '/migrate/jobs', params: { limit: 20 } }),
					call({ method: 'get', url: '/migrate/bundles' }),
				]);
				jobs.value = jobList.data.jobs || [];
				bundles.value = bundleList.data.bundles || [];
				listsError.value = '';
			} catch (error) {
				listsError.value = errorMessage(error);
			}
		}

		function stopFollowing(name) {
			if (polls[name]) clearTimeout(polls[name].timer);
			delete polls[name];
		}

		/* What a panel does once its job is final: the files check's report replaces its "Checking…" line. */
		function finished(name, data) {
			refreshLists();
			if (name === 'files') {
				filesMessage.value = '';
				if (FILES_CHECK_KINDS.includes(data.kind)) filesReport.value = data.result;
			}
			if (name === 'sync') {
				refreshSyncs();
				if (history.name) showHistory(history.name);
			}
		}

		/* A poll that fails while an import runs is the instance recreating its tables: a note until the next good poll. */
		function pollFailed(panel, error) {
			const job = panel.job;
			if (job && job.kind === 'import' && !FINAL.includes(job.state)) {
				panel.note = RESTARTING;
			} else {
				panel.error = errorMessage(error);
			}
		}

		/* Follow job `id` in panel `name` until it is final; the other panels' jobs keep their own polls. */
		function follow(name, id) {
			stopFollowing(name);
			const panel = panels[name];
			const poll = { timer: null };
			polls[name] = poll;
			panel.error = '';
			panel.note = '';
			const tick = async () => {
				try {
					const { data } = await call({ method: 'get', url: `/migrate/jobs/${encodeURIComponent(id)}` });
					if (polls[name] !== poll) return; // another job took the panel meanwhile
					panel.job = data;
					panel.error = '';
					panel.note = '';
					if (FINAL.includes(data.state)) {
						delete polls[name];
						finished(name, data);
						return;
					}
				} catch (error) {
					if (polls[name] !== poll) return;
					pollFailed(panel, error);
				}
				poll.timer = setTimeout(tick, POLL_MS);
			};
			tick();
		}

		/* A job just started by an action: shown in its panel at once, then followed. */
		function started(name, data) {
			panels[name].job = data;
			follow(name, data.id);
		}

		async function startExport() {
			busy.value = 'export';
			panels.export.error = '';
			try {
				const body = { full: true, freeze: exportForm.freeze };
				if (exportForm.passphrase) body.passphrase = exportForm.passphrase;
				const { data } = await call({ method: 'post', url: '/migrate/export', data: body });
				started('export', data);
			} catch (error) {
				panels.export.error = errorMessage(error);
			} finally {
				busy.value = '';
			}
		}

		async function cancelJob(name) {
			const panel = panels[name];
			if (!panel.job) return;
			try {
				await call({ method: 'post', url: `/migrate/jobs/${encodeURIComponent(panel.job.id)}/cancel` });
			} catch (error) {
				panel.error = errorMessage(error);
			}
		}

		function downloadHref(path) {
			const t = token();
			return t ? `${path}?access_token=${encodeURIComponent(t)}` : path;
		}

		async function planImport() {
			busy.value = 'plan';
			plan.value = null;
			planError.value = '';
			planBundle.value = '';
			try {
				let response;
				if (importForm.file) {
					const form = new FormData();
					form.append('dry_run', 'true');
					form.append('replace', importForm.replace ? 'true' : 'false');
					if (importForm.passphrase) form.append('passphrase', importForm.passphrase);
					form.append('bundle', importForm.file, importForm.file.name);
					response = await call({ method: 'post', url: '/migrate/import', data: form });
					// The upload is kept as a server-side bundle: find it so the real run need not upload again.
					const { data } = await call({ method: 'get', url: '/migrate/bundles' });
					bundles.value = data.bundles || [];
					const uploaded = bundles.value
						.filter((b) => b.id.startsWith('upload-') && b.size === importForm.file.size)
						.sort((a, b) => (a.created_at < b.created_at ? 1 : -1))[0];
					planBundle.value = uploaded ? uploaded.id : '';
				} else if (importForm.source) {
					const body = { bundle: importForm.source, dry_run: true, replace: importForm.replace };
					if (importForm.passphrase) body.passphrase = importForm.passphrase;
					response = await call({ method: 'post', url: '/migrate/import', data: body });
					planBundle.value = importForm.source;
				} else {
					planError.value = 'Choose a bundle of the sidecar or upload one first.';
					return;
				}
				plan.value = response.data.plan || response.data;
			} catch (error) {
				planError.value = errorMessage(error);
			} finally {
				busy.value = '';
			}
		}

		async function applyImport() {
			if (!planBundle.value) {
				planError.value = 'The uploaded bundle could not be found on the sidecar; plan again.';
				return;
			}
			busy.value = 'import';
			try {
				const body = { bundle: planBundle.value, dry_run: false, replace: importForm.replace };
				if (importForm.passphrase) body.passphrase = importForm.passphrase;
				const { data } = await call({ method: 'post', url: '/migrate/import', data: body });
				plan.value = null;
				started('import', data);
			} catch (error) {
				planError.value = errorMessage(error);
			} finally {
				busy.value = '';
			}
		}

		async function checkFiles() {
			busy.value = 'files';
			filesReport.value = null;
			filesMessage.value = '';
			try {
				const { status, data } = await call({ method: 'post', url: '/migrate/files/check', data: {} });
				if (status === 202 && data && data.id) {
					filesMessage.value = 'Checking every file row against its bytes…';
					started('files', data);
				} else {
					filesReport.value = data;
				}
			} catch (error) {
				const status = error && error.response && error.response.status;
				filesMessage.value = status === 404 || status === 405
					? 'This sidecar has no files check yet (POST /migrate/files/check): upgrade cairn-migrate.'
					: errorMessage(error);
			} finally {
				busy.value = '';
			}
		}

		/*
		 * Does this instance have the API promote writes through?  Directus 9.22.4 answers 404 to both
		 * /schema/* and /config/*: the section then says so instead of a plan failing on a 404 inside.
		 */
		async function probePromoteApi() {
			const answers = await Promise.all(PROMOTE_API.map((path) => api.get(path)
				.then(() => null)
				.catch((error) => (error && error.response && error.response.status === 404 ? path : null))));
			promoteMissing.value = answers.filter(Boolean);
		}

		/*
		 * promote's parameters: the source as typed, the target this instance at its own URL with the
		 * admin's current access token (a secret parameter: the sidecar keeps it in memory only).
		 */
		function promoteParams(dryRun) {
			const params = {
				from: promoteForm.from.trim(), to: instanceUrl(), to_token: token(), dry_run: dryRun,
				only: PROMOTE_KINDS.filter((kind) => promoteForm.only[kind]),
				allow_data_loss: promoteForm.allowDataLoss, force: promoteForm.force, destructive: promoteForm.destructive,
			};
			if (promoteForm.fromToken) params.from_token = promoteForm.fromToken;
			return params;
		}

		/* The dry run: the combined plan (a refused plan comes back as 422 with the same report). */
		async function planPromote() {
			promotePlan.value = null;
			promoteError.value = '';
			if (!promoteForm.from.trim()) {
				promoteError.value = 'Type the source instance\u2019s URL (and an admin token of it) first.';
				return;
			}
			busy.value = 'promote-plan';
			try {
				const params = promoteParams(true);
				if (!params.only.length) {
					promoteError.value = 'Tick at least one part to promote.';
					return;
				}
				const { data } = await call({ method: 'post', url: '/migrate/ops', data: { op: 'promote', params } });
				promotePlan.value = data.report;
			} catch (error) {
				const data = error && error.response && error.response.data;
				if (data && data.report) promotePlan.value = data.report;
				else promoteError.value = errorMessage(error);
			} finally {
				busy.value = '';
			}
		}

		async function applyPromote() {
			busy.value = 'promote';
			promoteError.value = '';
			try {
				const { data } = await call({ method: 'post', url: '/migrate/ops', data: { op: 'promote', params: promoteParams(false) } });
				promotePlan.value = null;
				started('promote', data);
			} catch (error) {
				promoteError.value = errorMessage(error);
			} finally {
				busy.value = '';
			}
		}

		/* The allowed folders and this instance's .env (the default target), once the sidecar answers. */
		async function loadPaths() {
			try {
				const { data } = await call({ method: 'get', url: '/migrate/paths' });
				Object.assign(paths, { loaded: true, allowed: data.allowed || [], env: data.env || null,
					envOutside: !!data.env_outside, error: '' });
				if (paths.env && !contentForm.to) contentForm.to = paths.env;
				if (paths.env && !syncForm.target) syncForm.target = paths.env;
			} catch (error) {
				const status = error && error.response && error.response.status;
				paths.error = status === 404 || status === 405
					? 'This sidecar does not list its allowed folders (GET /migrate/paths): upgrade cairn-migrate.'
					: errorMessage(error);
			}
		}

		/* This instance's user collections (not directus_*, not folders without a table), for the pickers. */
		async function loadCollections() {
			try {
				const { data } = await api.get('/collections');
				collections.value = (data.data || [])
					.filter((c) => c.schema && !String(c.collection).startsWith('directus_'))
					.map((c) => c.collection)
					.sort();
			} catch (error) {
				contentError.value = `GET /collections: ${errorMessage(error)}`;
			}
		}

		const picked = (selection) => collections.value.filter((name) => selection[name]);

		/* How a content move writes: a URL target only through its API, a .env target as chosen. */
		const contentVia = () => (/^https?:\/\//i.test(contentForm.to.trim()) ? 'api' : contentForm.via);

		/* content's parameters from the form, or {error} naming the field to fix. */
		function contentParams(dryRun) {
			const from = contentForm.from.trim();
			const to = contentForm.to.trim();
			if (!from || !to) return { error: 'Fill in the source (a running instance\u2019s URL with an admin token of it, an instance\u2019s .env or an export --full bundle) and the target (an instance\u2019s .env or a running instance\u2019s URL).' };
			if (/^https?:\/\//i.test(from) && !contentForm.fromToken.trim()) return { error: 'A source given by URL is read through its API: type an admin token of it.' };
			/* A target given by URL can only be written through its API; a .env target either way (the "Write through" choice). */
			const via = contentVia();
			if (via === 'api' && !contentForm.toToken.trim()) return { error: 'Writing through the target\u2019s API needs an admin token of the target: type one beside "Write through".' };
			const chosen = picked(contentForm.collections);
			if (!chosen.length) return { error: 'Tick at least one collection to move.' };
			const filter = parseJsonField(contentForm.filter, 'The filter');
			if (filter.error) return { error: filter.error };
			const depth = wholeNumber(contentForm.depth);
			const maxDelete = wholeNumber(contentForm.maxDelete);
			if (Number.isNaN(depth)) return { error: 'Depth must be a whole number (empty: follow every relation).' };
			if (Number.isNaN(maxDelete)) return { error: 'Max delete must be a whole number.' };
			const params = { from, to, collections: chosen, mode: contentForm.mode, via, dry_run: dryRun };
			if (filter.value) params.filter = filter.value;
			if (depth !== undefined) params.depth = depth;
			if (maxDelete !== undefined) params.max_delete = maxDelete;
			if (contentForm.mask.trim()) params.mask = contentForm.mask.trim();
			/* A URL source's admin token: a secret parameter (the sidecar keeps it in memory only) that also proves the caller may read it. */
			if (/^https?:\/\//i.test(from)) params.from_token = contentForm.fromToken.trim();
			if (via === 'api') params.to_token = contentForm.toToken.trim();
			return { params };
		}

		/* The dry run: the per-collection plan at once (a refused plan comes back as 422 with the same report). */
		async function planContent() {
			contentPlan.value = null;
			contentError.value = '';
			const { params, error } = contentParams(true);
			if (error) {
				contentError.value = error;
				return;
			}
			busy.value = 'content-plan';
			try {
				const { data } = await call({ method: 'post', url: '/migrate/ops', data: { op: 'content', params } });
				contentPlan.value = data.report;
			} catch (failure) {
				const data = failure && failure.response && failure.response.data;
				if (data && data.report) contentPlan.value = data.report;
				else contentError.value = errorMessage(failure);
			} finally {
				busy.value = '';
			}
		}

		async function applyContent() {
			const { params, error } = contentParams(false);
			if (error) {
				contentError.value = error;
				return;
			}
			busy.value = 'content';
			contentError.value = '';
			try {
				const { data } = await call({ method: 'post', url: '/migrate/ops', data: { op: 'content', params } });
				contentPlan.value = null;
				started('content', data);
			} catch (failure) {
				contentError.value = errorMessage(failure);
			} finally {
				busy.value = '';
			}
		}

		async function refreshSyncs() {
			try {
				const { data } = await call({ method: 'get', url: '/migrate/syncs' });
				syncs.value = data.syncs || [];
				syncsError.value = '';
			} catch (error) {
				const status = error && error.response && error.response.status;
				syncsError.value = status === 404 || status === 405
					? 'This sidecar has no sync profiles yet (GET /migrate/syncs): upgrade cairn-migrate.'
					: errorMessage(error);
			}
		}

		/* A new profile from the form: the filter applies to each ticked collection. */
		function syncBody() {
			const name = syncForm.name.trim();
			const source = syncForm.source.trim();
			const target = syncForm.target.trim();
			if (!name || !source || !target) return { error: 'Fill in the name, the source .env and the target .env.' };
			const chosen = picked(syncForm.collections);
			if (!chosen.length) return { error: 'Tick at least one collection to sync.' };
			const filter = parseJsonField(syncForm.filter, 'The filter');
			if (filter.error) return { error: filter.error };
			const maxDelete = wholeNumber(syncForm.maxDelete);
			const interval = wholeNumber(syncForm.interval);
			if (Number.isNaN(maxDelete)) return { error: 'Max delete must be a whole number.' };
			if (Number.isNaN(interval)) return { error: 'The interval must be a whole number of seconds.' };
			const body = { name, source, target, collections: chosen, mode: syncForm.mode, conflict: syncForm.conflict };
			if (filter.value) body.filters = Object.fromEntries(chosen.map((c) => [c, filter.value]));
			if (maxDelete !== undefined) body.max_delete = maxDelete;
			if (syncForm.mask) body.mask = syncForm.mask;
			if (syncForm.cron.trim() || interval) {
				body.schedule = { timezone: syncForm.timezone.trim() || 'UTC' };
				if (syncForm.cron.trim()) body.schedule.cron = syncForm.cron.trim();
				if (interval) body.schedule.interval_seconds = interval;
			}
			return { body };
		}

		async function addSync() {
			syncFormError.value = '';
			const { body, error } = syncBody();
			if (error) {
				syncFormError.value = error;
				return;
			}
			busy.value = 'sync-add';
			try {
				await call({ method: 'post', url: '/migrate/syncs', data: body });
				syncForm.name = '';
				await refreshSyncs();
			} catch (failure) {
				syncFormError.value = errorMessage(failure);
			} finally {
				busy.value = '';
			}
		}

		const syncUrl = (name, rest = '') => `/migrate/syncs/${encodeURIComponent(name)}${rest}`;

		/* Pause (enabled false: no scheduled run, "Run now" refused) or resume. */
		async function setEnabled(name, enabled) {
			busy.value = `sync-pause-${name}`;
			syncsError.value = '';
			try {
				await call({ method: 'patch', url: syncUrl(name), data: { enabled } });
				await refreshSyncs();
			} catch (error) {
				syncsError.value = errorMessage(error);
			} finally {
				busy.value = '';
			}
		}

		async function removeSync(name) {
			busy.value = `sync-remove-${name}`;
			syncsError.value = '';
			try {
				await call({ method: 'delete', url: syncUrl(name) });
				confirmRemove.value = '';
				if (history.name === name) Object.assign(history, { name: '', runs: [], error: '' });
				await refreshSyncs();
			} catch (error) {
				syncsError.value = errorMessage(error);
			} finally {
				busy.value = '';
			}
		}

		/* "Run now": the sync_run job, followed in the Syncs panel; its end refreshes the list and the history. */
		async function runSync(name) {
			busy.value = `sync-run-${name}`;
			panels.sync.error = '';
			try {
				const { data } = await call({ method: 'post', url: syncUrl(name, '/run'), data: {} });
				started('sync', data);
				showHistory(name);
			} catch (error) {
				panels.sync.error = errorMessage(error);
			} finally {
				busy.value = '';
			}
		}

		async function showHistory(name) {
			if (history.name !== name) history.runs = []; // never another profile's runs under this name
			history.name = name;
			history.error = '';
			try {
				const { data } = await call({ method: 'get', url: syncUrl(name, '/history'), params: { limit: HISTORY_LIMIT } });
				if (history.name === name) history.runs = data.runs || [];
			} catch (error) {
				history.runs = [];
				history.error = errorMessage(error);
			}
		}

		onMounted(() => {
			checkHealth();
			probePromoteApi();
			loadCollections();
			healthTimer = setInterval(checkHealth, HEALTH_MS);
		});
		onUnmounted(() => {
			PANELS.forEach(stopFollowing);
			clearInterval(healthTimer);
		});

		return () => {
			const PrivateView = resolveComponent('private-view');
			const VButton = resolveComponent('v-button');
			const VNotice = resolveComponent('v-notice');

			const button = (label, onClick, opts = {}) =>
				h(VButton, { onClick, disabled: down.value || !!opts.disabled, loading: busy.value === opts.busy, secondary: !!opts.secondary,
					'data-testid': opts.testid }, () => label);

			const status = () => {
				if (sidecar.state === 'down') {
					const start = sidecar.start
						? `Start it with \`${sidecar.start}\``
						: 'Start it (cairn-migrate serve) at the sidecar URL install-extension was given';
					return h(VNotice, { type: 'danger', 'data-testid': 'sidecar-down' }, () =>
						`Sidecar down: ${sidecar.message || 'the cairn-migrate sidecar does not answer'}. ${start}; `
						+ 'this page retries every 10 seconds.');
				}
				if (sidecar.state === 'checking') return h(VNotice, { type: 'info' }, () => 'Asking the cairn-migrate sidecar…');
				return h(VNotice, { type: 'success', 'data-testid': 'sidecar-up' }, () => `The cairn-migrate sidecar ${sidecar.version} is up.`);
			};

			/* The panel of one action: its error or note, then its job; `report` false leaves the result to the section. */
			const jobPanel = (name, { report = true } = {}) => {
				const panel = panels[name];
				const current = panel.job;
				const parts = [];
				if (panel.error) parts.push(h(VNotice, { type: 'danger', 'data-testid': 'job-error' }, () => panel.error));
				if (panel.note) parts.push(h(VNotice, { type: 'info', 'data-testid': 'job-note' }, () => panel.note));
				if (!current) return parts;
				const pct = percent(current.progress);
				const p = current.progress || {};
				const error = current.error;
				parts.push(h('div', { 'data-testid': 'job', 'data-panel': name, 'data-job-id': current.id, 'data-state': current.state,
					style: 'margin-top: 12px;' }, [
					h('div', { style: css.row }, [
						h('strong', `${current.kind} ${current.id}`),
						h('span', { 'data-testid': 'job-state' }, current.state),
						p.items_total || p.bytes_total
							? h('span', { style: css.muted, 'data-testid': 'job-progress' }, `${p.items_done}/${p.items_total ?? '?'} items, ${formatBytes(p.bytes_done)}${p.bytes_total ? ' of ' + formatBytes(p.bytes_total) : ''}`
								+ (formatRate(p) ? ` (${formatRate(p)})` : ''))
							: null,
						FINAL.includes(current.state) ? null : button('Cancel', () => cancelJob(name), { secondary: true, testid: 'cancel-job' }),
					]),
					h('div', { style: css.bar }, [h('div', { style: `${css.fill} width: ${FINAL.includes(current.state) ? 100 : pct ?? 5}%;` })]),
					error ? h(VNotice, { type: 'danger' }, () => {
						const hint = pageHint(error.message, error.hint);
						return `${error.message}${hint ? ' — ' + hint : ''}`;
					}) : null,
					current.state === 'succeeded' && current.result && current.result.download
						? h('div', { style: css.row }, [
							h('a', { href: downloadHref(current.result.download), download: '', 'data-testid': 'download', style: css.link },
								`Download bundle ${current.result.bundle_id || ''}`),
							current.result.size ? h('span', { style: css.muted }, formatBytes(current.result.size)) : null,
						])
						: null,
					report && current.state === 'succeeded' && current.result && !current.result.download
						? h('pre', { style: css.pre }, JSON.stringify(current.result, null, 2))
						: null,
					Array.isArray(current.log) && current.log.length
						? h('pre', { style: css.pre, 'data-testid': 'job-log' }, current.log.slice(-8).map((l) => `${l.at}  ${l.message}`).join('\n'))
						: null,
				]));
				return parts;
			};

			const exportSection = h('section', { style: css.section, id: 'export' }, [
				h('h2', { style: css.heading }, 'Export the whole instance'),
				h('p', { style: css.muted }, 'One bundle with the database, every file\u2019s bytes and the config, written on the sidecar.'),
				h('div', { style: css.row }, [
					h('label', { style: css.label }, [
						h('input', { type: 'checkbox', checked: exportForm.freeze, 'data-testid': 'export-freeze',
							onChange: (e) => { exportForm.freeze = e.target.checked; } }),
						'Hold writes while capturing (freeze)',
					]),
					h('input', { type: 'password', placeholder: 'Passphrase to encrypt (optional, 8+ characters)', value: exportForm.passphrase,
						style: `${css.input} min-width: 320px;`, 'data-testid': 'export-passphrase', autocomplete: 'new-password',
						onInput: (e) => { exportForm.passphrase = e.target.value; } }),
				]),
				button('Start export', startExport, { busy: 'export', testid: 'start-export',
					disabled: exportForm.passphrase.length > 0 && exportForm.passphrase.length < 8 }),
				...jobPanel('export'),
			]);

			const importSection = h('section', { style: css.section, id: 'import' }, [
				h('h2', { style: css.heading }, 'Import a bundle'),
				h('p', { style: css.muted }, 'The plan of a dry run comes first; nothing changes until you apply it.'),
				h('div', { style: css.row }, [
					h('select', { style: css.input, value: importForm.source, 'data-testid': 'import-source',
						onChange: (e) => { importForm.source = e.target.value; importForm.file = null; plan.value = null; } }, [
						h('option', { value: '' }, 'A bundle on the sidecar…'),
						...bundles.value.map((b) => h('option', { value: b.id }, `${b.name} (${formatBytes(b.size)}, ${b.created_at})`)),
					]),
					h('span', { style: css.muted }, 'or upload'),
					h('input', { type: 'file', 'data-testid': 'import-file', accept: '.tar,.gz,.enc,.tgz',
						onChange: (e) => { importForm.file = e.target.files[0] || null; importForm.source = ''; plan.value = null; } }),
				]),
				h('div', { style: css.row }, [
					h('label', { style: css.label }, [
						h('input', { type: 'checkbox', checked: importForm.replace, 'data-testid': 'import-replace',
							onChange: (e) => { importForm.replace = e.target.checked; } }),
						`${REPLACE_LABEL} (a safety bundle is written first)`,
					]),
					h('input', { type: 'password', placeholder: 'Passphrase (encrypted bundles)', value: importForm.passphrase, style: css.input,
						autocomplete: 'off', 'data-testid': 'import-passphrase', onInput: (e) => { importForm.passphrase = e.target.value; } }),
				]),
				button('Show the plan (dry run)', planImport, { busy: 'plan', testid: 'plan-import', secondary: true }),
				planError.value ? h(VNotice, { type: 'danger', style: 'margin-top: 12px;', 'data-testid': 'plan-error' }, () => planError.value) : null,
				plan.value
					? h('div', { 'data-testid': 'import-plan', style: 'margin-top: 12px;' }, [
						h(VNotice, { type: 'warning' }, () => 'Read the plan. Applying it writes into this instance'
							+ (importForm.replace ? ', its sessions too: you may have to log in again.' : '.')),
						h('pre', { style: css.pre }, JSON.stringify(plan.value, null, 2)),
						button('Apply this import', applyImport, { busy: 'import', testid: 'apply-import' }),
					])
					: null,
				...jobPanel('import'),
			]);

			const filesSection = h('section', { style: css.section, id: 'files' }, [
				h('h2', { style: css.heading }, 'Files check'),
				h('p', { style: css.muted }, 'Every file row against the bytes in its storage location.'),
				button('Check files', checkFiles, { busy: 'files', testid: 'check-files', secondary: true }),
				filesMessage.value ? h('p', { 'data-testid': 'files-message' }, filesMessage.value) : null,
				...jobPanel('files', { report: false }),
				filesReport.value ? h('pre', { style: css.pre, 'data-testid': 'files-report' }, JSON.stringify(filesReport.value, null, 2)) : null,
			]);

			const promoteReport = panels.promote.job && panels.promote.job.state === 'succeeded' ? panels.promote.job.result : null;
			const promoteSection = h('section', { style: css.section, id: 'promote' }, [
				h('h2', { style: css.heading }, 'Promote structure'),
				h('p', { style: css.muted }, 'Schema, roles and permissions, flows, dashboards, presets, settings and translation '
					+ 'strings of a source instance into this one. The plan comes first; nothing changes until you apply it.'),
				promoteMissing.value.length
					? h(VNotice, { type: 'warning', 'data-testid': 'promote-unsupported' }, () => `This instance answers 404 to `
						+ `${promoteMissing.value.join(' and ')}: promote plans, applies and writes its safety snapshot through `
						+ 'CairnCMS\u2019s own /schema/* and /config/* API, so it cannot promote into this instance '
						+ '(Directus 9 has neither). Promote into a CairnCMS instance instead.')
					: null,
				h('div', { style: css.row }, [
					h('input', { type: 'url', placeholder: 'Source instance URL (https://dev.example.com)', value: promoteForm.from,
						style: `${css.input} min-width: 320px;`, 'data-testid': 'promote-from',
						onInput: (e) => { promoteForm.from = e.target.value; promotePlan.value = null; } }),
					h('input', { type: 'password', placeholder: 'An admin token of the source', value: promoteForm.fromToken,
						style: `${css.input} min-width: 260px;`, autocomplete: 'off', 'data-testid': 'promote-from-token',
						onInput: (e) => { promoteForm.fromToken = e.target.value; promotePlan.value = null; } }),
				]),
				h('div', { style: css.row }, PROMOTE_KINDS.map((kind) => h('label', { style: css.label }, [
					h('input', { type: 'checkbox', checked: promoteForm.only[kind], 'data-testid': `promote-only-${kind}`,
						onChange: (e) => { promoteForm.only[kind] = e.target.checked; promotePlan.value = null; } }),
					kind,
				]))),
				h('div', { style: css.row }, [
					h('label', { style: css.label }, [
						h('input', { type: 'checkbox', checked: promoteForm.allowDataLoss, 'data-testid': 'promote-allow-data-loss',
							onChange: (e) => { promoteForm.allowDataLoss = e.target.checked; promotePlan.value = null; } }),
						'Allow data loss (drop tables and columns that hold rows)',
					]),
					h('label', { style: css.label }, [
						h('input', { type: 'checkbox', checked: promoteForm.destructive, 'data-testid': 'promote-destructive',
							onChange: (e) => { promoteForm.destructive = e.target.checked; promotePlan.value = null; } }),
						'Destructive (delete roles, permissions, flows, dashboards, presets the source lacks)',
					]),
					h('label', { style: css.label }, [
						h('input', { type: 'checkbox', checked: promoteForm.force, 'data-testid': 'promote-force',
							onChange: (e) => { promoteForm.force = e.target.checked; promotePlan.value = null; } }),
						'Force across vendors or versions',
					]),
				]),
				button('Show the plan', planPromote, { busy: 'promote-plan', testid: 'plan-promote', secondary: true,
					disabled: promoteMissing.value.length > 0 }),
				promoteError.value ? h(VNotice, { type: 'danger', style: 'margin-top: 12px;', 'data-testid': 'promote-error' }, () => promoteError.value) : null,
				promotePlan.value
					? h('div', { 'data-testid': 'promote-plan', 'data-changes': String(!!promotePlan.value.changes),
						'data-refused': String(promotePlan.value.refused.length), style: 'margin-top: 12px;' }, [
						...promotePlan.value.refused.map((r) => h(VNotice, { type: 'danger', 'data-testid': 'promote-refused' },
							() => `Refused: ${r.message}. Fix: ${promoteFix(r.fix)}.`)),
						promotePlan.value.changes
							? h(VNotice, { type: 'warning' }, () => `Read the plan. Applying it changes this instance (${promotePlan.value.to}); `
								+ 'a safety snapshot of its structure is written first.')
							: h(VNotice, { type: 'success', 'data-testid': 'promote-no-changes' }, () => 'No changes: this instance already has the source\u2019s structure.'),
						h('pre', { style: css.pre, 'data-testid': 'promote-plan-lines' }, promoteLines(promotePlan.value).join('\n')),
						button('Apply', applyPromote, { busy: 'promote', testid: 'apply-promote',
							disabled: !promotePlan.value.changes || promotePlan.value.refused.length > 0 }),
					])
					: null,
				...jobPanel('promote', { report: false }),
				promoteReport
					? h('div', { 'data-testid': 'promote-report' }, [
						h('p', {}, promoteReport.safety_snapshot
							? [`Applied. Safety snapshot of the structure before: `, h('code', { 'data-testid': 'promote-snapshot' }, promoteReport.safety_snapshot)]
							: (promoteReport.changes ? 'Not applied.' : 'No changes: nothing was written.')),
						h('pre', { style: css.pre }, promoteLines(promoteReport).join('\n')),
					])
					: null,
			]);

			const field = (value, onInput, opts = {}) => h('input', { type: opts.type || 'text', value, placeholder: opts.placeholder,
				style: `${css.input} ${opts.width ? `min-width: ${opts.width}px;` : ''}`, 'data-testid': opts.testid,
				autocomplete: 'off', onInput: (e) => onInput(e.target.value) });
			const select = (value, options, onChange, testid) => h('select', { style: css.input, value, 'data-testid': testid,
				onChange: (e) => onChange(e.target.value) }, options.map(([v, label]) => h('option', { value: v, selected: v === value }, label)));
			const labelled = (label, control) => h('label', { style: css.label }, [h('span', { style: css.muted }, label), control]);

			/* Ticks for this instance's user collections; `selection` maps a name to true. */
			const collectionPicker = (selection, prefix, onChange) => (collections.value.length
				? h('div', { style: css.row, 'data-testid': `${prefix}-collections` }, collections.value.map((name) => h('label', { style: css.label }, [
					h('input', { type: 'checkbox', checked: !!selection[name], 'data-testid': `${prefix}-collection-${name}`,
						onChange: (e) => { selection[name] = e.target.checked; if (onChange) onChange(); } }),
					name,
				])))
				: h('p', { style: css.muted }, 'This instance has no collections of its own to move.'));

			/* Where paths may point: the operator's folders, or a warning that there are none. */
			const pathsNote = () => {
				if (paths.error) return h(VNotice, { type: 'warning', 'data-testid': 'paths-error' }, () => paths.error);
				if (!paths.loaded) return null;
				if (!paths.allowed.length) {
					return h(VNotice, { type: 'warning', 'data-testid': 'paths-none' }, () => 'The sidecar allows no folder for paths '
						+ '(CAIRN_MIGRATE_HTTP_PATHS is empty). Content moves and syncs name .env files on the sidecar\u2019s machine: '
						+ 'its operator adds the folders holding them to CAIRN_MIGRATE_HTTP_PATHS and restarts it.');
				}
				return h('p', { style: css.muted, 'data-testid': 'paths-allowed' }, `Paths on the sidecar\u2019s machine, inside: ${paths.allowed.join(', ')}.`
					+ (paths.envOutside ? ' This instance\u2019s own .env is not inside them, so type the target\u2019s path.' : ''));
			};

			/* A content report (plan or result): a row per collection, then users, files, references set NULL. */
			const contentTable = (report, testid) => {
				const plan = report.plan || {};
				const users = report.users || {};
				const files = report.files || {};
				const nulled = Object.entries(report.nulled || {});
				return h('div', { 'data-testid': testid, 'data-changes': String(!!report.changes),
					'data-refused': String((report.refused || []).length), 'data-applied': String(!!report.applied) }, [
					...(report.refused || []).map((r) => h(VNotice, { type: 'danger', 'data-testid': 'content-refused' },
						() => `Refused: ${r.message}. Fix: ${contentFix(r.fix)}.`)),
					Object.keys(plan).length
						? h('table', { style: css.table }, [
							h('thead', [h('tr', ['Collection', ...COUNT_KINDS].map((t) => h('th', { style: css.cell }, t)))]),
							h('tbody', Object.entries(plan).map(([name, c]) => h('tr', { 'data-testid': 'content-plan-row', 'data-collection': name },
								[h('td', { style: css.cell }, name), ...COUNT_KINDS.map((kind) => h('td', { style: css.cell, 'data-kind': kind }, String(c[kind] || 0)))]))),
						])
						: null,
					h('p', { 'data-testid': 'content-users' }, `Users: ${users.matched || 0} matched by email, ${(users.unmatched || []).length} unmatched`
						+ ((users.unmatched || []).length ? ` (${users.unmatched.join(', ')}: their references become NULL)` : '')
						+ (users.created && users.created.length ? `, ${users.created.length} created` : '') + '.'),
					h('p', { 'data-testid': 'content-files' }, `Files: ${files.copy || 0} to copy, ${formatBytes(files.bytes || 0)}.`),
					nulled.length ? h('p', { style: css.muted }, `References set NULL: ${nulled.map(([k, v]) => `${k} (${Array.isArray(v) ? v.length : v})`).join(', ')}.`) : null,
				]);
			};

			const contentResult = panels.content.job && panels.content.job.state === 'succeeded' ? panels.content.job.result : null;
			const clearContentPlan = () => { contentPlan.value = null; };
			const contentSection = h('section', { style: css.section, id: 'content' }, [
				h('h2', { style: css.heading }, 'Content move'),
				h('p', { style: css.muted }, 'Rows of collections matching a filter, with every row they relate to, their files and bytes, '
					+ 'from a source instance\u2019s database (or an export --full bundle) into a target whose structure matches. '
					+ 'The plan comes first; nothing changes until you apply it.'),
				pathsNote(),
				h('div', { style: css.row }, [
					field(contentForm.from, (v) => { contentForm.from = v; clearContentPlan(); }, { testid: 'content-from', width: 380,
						placeholder: 'Source: a running instance\u2019s URL, or an instance\u2019s .env or a bundle on the sidecar\u2019s machine' }),
					h('input', { type: 'password', placeholder: 'An admin token of the source (when it is a URL)', value: contentForm.fromToken,
						style: `${css.input} min-width: 260px;`, autocomplete: 'off', 'data-testid': 'content-from-token',
						onInput: (e) => { contentForm.fromToken = e.target.value; clearContentPlan(); } }),
					field(contentForm.to, (v) => { contentForm.to = v; clearContentPlan(); }, { testid: 'content-to', width: 380,
						placeholder: 'Target: an instance\u2019s .env (default: this instance\u2019s) or a running instance\u2019s URL' }),
				]),
				h('div', { style: css.row }, [
					labelled('Write through', select(contentVia(), [['db', 'its database (one transaction, fast)'], ['api', 'its API (validation, permissions, hooks and flows run)']],
						(v) => { contentForm.via = v; clearContentPlan(); }, 'content-via')),
					contentVia() === 'api'
						? h('input', { type: 'password', placeholder: 'An admin token of the target', value: contentForm.toToken,
							style: `${css.input} min-width: 260px;`, autocomplete: 'off', 'data-testid': 'content-to-token',
							onInput: (e) => { contentForm.toToken = e.target.value; clearContentPlan(); } })
						: null,
				]),
				collectionPicker(contentForm.collections, 'content', clearContentPlan),
				h('div', { style: css.row }, [
					h('textarea', { value: contentForm.filter, rows: 2, style: `${css.input} min-width: 380px; font-family: var(--family-monospace, monospace);`,
						placeholder: 'Filter (JSON), e.g. {"status": {"_eq": "published"}}', 'data-testid': 'content-filter',
						onInput: (e) => { contentForm.filter = e.target.value; clearContentPlan(); } }),
				]),
				h('div', { style: css.row }, [
					labelled('Depth', field(contentForm.depth, (v) => { contentForm.depth = v; clearContentPlan(); }, { testid: 'content-depth', placeholder: 'all' })),
					labelled('Mode', select(contentForm.mode, CONTENT_MODES.map((m) => [m, m]), (v) => { contentForm.mode = v; clearContentPlan(); }, 'content-mode')),
					labelled('Max delete', field(contentForm.maxDelete, (v) => { contentForm.maxDelete = v; clearContentPlan(); }, { testid: 'content-max-delete', placeholder: 'mirror only' })),
					labelled('Mask', h('input', { value: contentForm.mask, list: 'cairn-migrate-masks', style: css.input, 'data-testid': 'content-mask',
						placeholder: 'none', autocomplete: 'off', onInput: (e) => { contentForm.mask = e.target.value; clearContentPlan(); } })),
					h('datalist', { id: 'cairn-migrate-masks' }, MASK_PROFILES.map((m) => h('option', { value: m }))),
				]),
				button('Show the plan', planContent, { busy: 'content-plan', testid: 'plan-content', secondary: true }),
				contentError.value ? h(VNotice, { type: 'danger', style: 'margin-top: 12px;', 'data-testid': 'content-error' }, () => contentError.value) : null,
				contentPlan.value
					? h('div', { style: 'margin-top: 12px;' }, [
						contentPlan.value.refused.length
							? null
							: (contentPlan.value.changes
								? h(VNotice, { type: 'warning', 'data-testid': 'content-apply-warning' }, () => (contentPlan.value.via === 'api'
									? `Read the plan. Applying it writes through the API of ${contentPlan.value.to} batch by batch (its validation, permissions, hooks and flows run): not one transaction; a failure keeps the rows written so far, and applying again resumes.`
									: `Read the plan. Applying it writes into ${contentPlan.value.to} in one transaction.`))
								: h(VNotice, { type: 'success', 'data-testid': 'content-no-changes' }, () => 'No changes: the target already holds these rows.')),
						contentTable(contentPlan.value, 'content-plan'),
						button('Apply', applyContent, { busy: 'content', testid: 'apply-content',
							disabled: !contentPlan.value.changes || contentPlan.value.refused.length > 0 }),
					])
					: null,
				...jobPanel('content', { report: false }),
				contentResult ? contentTable(contentResult, 'content-report') : null,
			]);

			const lastRun = (run) => (run ? `${run.outcome}${run.dry_run ? ' (dry run)' : ''}, ${run.finished_at}` : 'never');
			/* Per profile a tbody: its row, then its actions (or the confirmation of its removal) beneath it. */
			const syncRows = syncs.value.map((s) => h('tbody', { key: s.name, 'data-testid': 'sync-row', 'data-name': s.name,
				'data-enabled': String(!!s.enabled) }, [h('tr', [
				h('td', { style: css.cell }, h('strong', s.name)),
				h('td', { style: css.cell }, `${s.source} \u2192 ${s.target}`),
				h('td', { style: css.cell }, (s.collections || []).join(', ')),
				h('td', { style: css.cell }, `${s.mode}${s.mode === 'mirror' ? ` (max ${s.max_delete})` : ''}, ${s.conflict}`),
				h('td', { style: css.cell }, scheduleText(s.schedule)),
				h('td', { style: css.cell, 'data-testid': 'sync-state' }, s.enabled ? 'active' : 'paused'),
				h('td', { style: css.cell, 'data-testid': 'sync-last-run' }, lastRun(s.last_run)),
				h('td', { style: css.cell }, s.next_run || (s.schedule && (s.schedule.cron || s.schedule.interval_seconds)
					? 'not scheduled by this sidecar (serve --scheduler)' : '\u2014')),
			]), h('tr', [h('td', { style: css.cell, colspan: 8 }, confirmRemove.value === s.name
					? h('div', { style: css.row, 'data-testid': 'sync-confirm-remove' }, [
						h('span', `Remove ${s.name}, its schedule, watermarks and history?`),
						button('Remove', () => removeSync(s.name), { busy: `sync-remove-${s.name}`, testid: 'sync-remove-yes' }),
						button('Keep', () => { confirmRemove.value = ''; }, { secondary: true, testid: 'sync-remove-no' }),
					])
					: h('div', { style: css.row }, [
						button('Run now', () => runSync(s.name), { busy: `sync-run-${s.name}`, testid: 'sync-run', disabled: !s.enabled }),
						button(s.enabled ? 'Pause' : 'Resume', () => setEnabled(s.name, !s.enabled),
							{ busy: `sync-pause-${s.name}`, testid: 'sync-pause', secondary: true }),
						button('History', () => showHistory(s.name), { testid: 'sync-history-show', secondary: true }),
						button('Remove', () => { confirmRemove.value = s.name; }, { testid: 'sync-remove', secondary: true }),
					]))]),
			]));

			const historyBlock = history.name
				? h('div', { 'data-testid': 'sync-history', 'data-name': history.name, style: 'margin-top: 12px;' }, [
					h('h3', { style: `${css.heading} font-size: 15px;` }, `Last runs of ${history.name}`),
					history.error ? h(VNotice, { type: 'danger' }, () => history.error) : null,
					history.runs.length === 0
						? h('p', { style: css.muted }, 'No runs yet.')
						: h('table', { style: css.table }, [
							h('thead', [h('tr', ['Started', 'Trigger', 'Outcome', 'Counts', 'Job'].map((t) => h('th', { style: css.cell }, t)))]),
							...history.runs.map((run) => h('tbody', { key: run.id, 'data-testid': 'sync-history-row', 'data-outcome': run.outcome,
								'data-job-id': run.job_id || '' }, [h('tr', [
								h('td', { style: css.cell }, run.started_at),
								h('td', { style: css.cell }, `${run.trigger}${run.full ? ', full' : ''}${run.dry_run ? ', dry run' : ''}`),
								h('td', { style: css.cell }, run.error ? `${run.outcome}: ${run.error.message}` : run.outcome),
								h('td', { style: css.cell, 'data-testid': 'sync-history-counts' }, syncCountLines(run.counts).join('; ') || '\u2014'),
								h('td', { style: css.cell }, run.job_id ? h('a', { style: css.link, onClick: () => follow('jobs', run.job_id) }, run.job_id) : ''),
							]), h('tr', [h('td', { style: css.cell, colspan: 5 }, h('details', [h('summary', { style: css.link }, 'Report'),
								h('pre', { style: css.pre, 'data-testid': 'sync-history-report' }, JSON.stringify(run.report, null, 2))]))])])),
						]),
				])
				: null;

			const syncTimezone = h('input', { value: syncForm.timezone, style: `${css.input} width: 140px;`, 'data-testid': 'sync-timezone',
				placeholder: 'UTC', onInput: (e) => { syncForm.timezone = e.target.value; } });
			const syncsSection = h('section', { style: css.section, id: 'syncs' }, [
				h('div', { style: css.row }, [h('h2', { style: `${css.heading} margin: 0;` }, 'Syncs'),
					button('Refresh', refreshSyncs, { secondary: true, testid: 'refresh-syncs' })]),
				h('p', { style: css.muted }, 'Recurring content moves: each run moves the rows changed on the source since the last run '
					+ '(its activity), on a schedule or when you run it.'),
				syncsError.value ? h(VNotice, { type: 'danger', 'data-testid': 'syncs-error' }, () => syncsError.value) : null,
				syncs.value.length === 0
					? h('p', { style: css.muted, 'data-testid': 'syncs-empty' }, 'No sync profiles yet.')
					: h('table', { style: css.table, 'data-testid': 'syncs' }, [
						h('thead', [h('tr', ['Name', 'Source \u2192 target', 'Collections', 'Mode, conflicts', 'Schedule', 'State', 'Last run', 'Next run']
							.map((t) => h('th', { style: css.cell }, t)))]),
						...syncRows,
					]),
				...jobPanel('sync', { report: false }),
				historyBlock,
				h('h3', { style: `${css.heading} font-size: 15px; margin-top: 24px;` }, 'Add a sync profile'),
				h('div', { style: css.row }, [
					field(syncForm.name, (v) => { syncForm.name = v; }, { testid: 'sync-name', placeholder: 'Name (letters, digits, - and _)' }),
					field(syncForm.source, (v) => { syncForm.source = v; }, { testid: 'sync-source', width: 320, placeholder: 'Source .env on the sidecar\u2019s machine' }),
					field(syncForm.target, (v) => { syncForm.target = v; }, { testid: 'sync-target', width: 320, placeholder: 'Target .env (default: this instance\u2019s)' }),
				]),
				collectionPicker(syncForm.collections, 'sync'),
				h('div', { style: css.row }, [
					h('textarea', { value: syncForm.filter, rows: 2, style: `${css.input} min-width: 380px; font-family: var(--family-monospace, monospace);`,
						placeholder: 'Filter (JSON), applied to each ticked collection', 'data-testid': 'sync-filter',
						onInput: (e) => { syncForm.filter = e.target.value; } }),
				]),
				h('div', { style: css.row }, [
					labelled('Mode', select(syncForm.mode, CONTENT_MODES.map((m) => [m, m]), (v) => { syncForm.mode = v; }, 'sync-mode')),
					labelled('Max delete', field(syncForm.maxDelete, (v) => { syncForm.maxDelete = v; }, { testid: 'sync-max-delete', placeholder: 'mirror only' })),
					labelled('Conflicts', select(syncForm.conflict, SYNC_CONFLICTS.map((c) => [c, c]), (v) => { syncForm.conflict = v; }, 'sync-conflict')),
					labelled('Mask', select(syncForm.mask, [['', 'none'], ...MASK_PROFILES.map((m) => [m, m])], (v) => { syncForm.mask = v; }, 'sync-mask')),
				]),
				h('div', { style: css.row }, [
					labelled('Cron', field(syncForm.cron, (v) => { syncForm.cron = v; }, { testid: 'sync-cron', placeholder: '*/15 * * * *' })),
					labelled('or every', field(syncForm.interval, (v) => { syncForm.interval = v; }, { testid: 'sync-interval', placeholder: 'seconds' })),
					labelled('Time zone', syncTimezone),
					h('span', { style: css.muted }, 'Neither: it runs only when you run it.'),
				]),
				button('Add the profile', addSync, { busy: 'sync-add', testid: 'add-sync' }),
				syncFormError.value ? h(VNotice, { type: 'danger', style: 'margin-top: 12px;', 'data-testid': 'sync-form-error' }, () => syncFormError.value) : null,
			]);

			const jobsSection = h('section', { style: css.section, id: 'jobs' }, [
				h('div', { style: css.row }, [h('h2', { style: `${css.heading} margin: 0;` }, 'Past jobs'), button('Refresh', refreshLists, { secondary: true, testid: 'refresh-jobs' })]),
				listsError.value ? h(VNotice, { type: 'danger', 'data-testid': 'lists-error' }, () => listsError.value) : null,
				jobs.value.length === 0
					? h('p', { style: css.muted }, 'No jobs yet.')
					: h('table', { style: css.table, 'data-testid': 'jobs' }, [
						h('thead', [h('tr', ['Job', 'Kind', 'State', 'Created', 'Finished', ''].map((t) => h('th', { style: css.cell }, t)))]),
						h('tbody', jobs.value.map((j) => h('tr', { key: j.id, 'data-testid': 'job-row', 'data-job-id': j.id }, [
							h('td', { style: css.cell }, h('a', { style: css.link, onClick: () => follow('jobs', j.id) }, j.id)),
							h('td', { style: css.cell }, j.kind),
							h('td', { style: css.cell }, j.state),
							h('td', { style: css.cell }, j.created_at),
							h('td', { style: css.cell }, j.finished_at || ''),
							h('td', { style: css.cell }, j.state === 'succeeded' && j.result && j.result.download
								? h('a', { href: downloadHref(j.result.download), download: '', style: css.link }, 'download') : ''),
						]))),
					]),
				...jobPanel('jobs'),
			]);

			const nav = h('div', { style: 'padding: 12px;' }, [
				['Export', '#export'], ['Import', '#import'], ['Files check', '#files'], ['Promote structure', '#promote'],
				['Content move', '#content'], ['Syncs', '#syncs'], ['Past jobs', '#jobs'],
			].map(([label, href]) => h('a', { href, style: 'display: block; padding: 8px 12px; color: var(--foreground-normal);' }, label)));

			return h(PrivateView, { title: 'Migrate' }, {
				navigation: () => nav,
				default: () => h('div', { style: css.page, 'data-testid': 'cairn-migrate' }, [
					h('div', { style: css.section }, [status()]),
					exportSection,
					importSection,
					filesSection,
					promoteSection,
					contentSection,
					syncsSection,
					jobsSection,
				]),
			});
		};
	},
};

/* Rejects when `promise` has not settled within `ms`: no request of this page waits forever. */
function withTimeout(promise, ms, what) {
	let timer;
	const timeout = new Promise((resolve, reject) => {
		timer = setTimeout(() => reject(new Error(`${what} did not answer within ${ms / 1000} s`)), ms);
	});
	return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/*
 * The app's `vue` module.  The app serves itself under <base href="<PUBLIC_URL path>/admin/">, so its
 * assets are at ./assets/ and the API (our endpoint) one level up.
 */
async function appVue() {
	const endpoint = new URL('../migrate/app/vue', document.baseURI);
	const response = await withTimeout(fetch(endpoint, { cache: 'no-store' }), LOAD_TIMEOUT_MS, `GET ${endpoint.pathname}`);
	const body = await response.json().catch(() => ({}));
	if (!response.ok || !body.vue) {
		const message = (body.errors && body.errors[0] && body.errors[0].message) || `${response.status} ${response.statusText}`;
		throw new Error(`GET ${endpoint.pathname}: ${message}`);
	}
	const chunk = new URL(`assets/${body.vue}`, document.baseURI).href;
	return withTimeout(import(chunk), LOAD_TIMEOUT_MS, chunk);
}

/* A page that needs no Vue import: a render function may return plain text. */
function loadFailedPage(error) {
	return {
		name: 'CairnMigrateLoadFailed',
		render: () => `cairn-migrate could not load the admin app's Vue: ${error && error.message ? error.message : error}. `
			+ 'Reinstall the extension (cairn-migrate install-extension) and restart the instance.',
	};
}

/* The route component, as vue-router's lazy loader: the app's Vue first, then the page. */
async function loadPage() {
	try {
		({ computed, h, inject, onMounted, onUnmounted, reactive, ref, resolveComponent } = await appVue());
		return MigratePage;
	} catch (error) {
		console.error('cairn-migrate:', error); // eslint-disable-line no-console
		return loadFailedPage(error);
	}
}

export default {
	id: 'migrate',
	name: 'Migrate',
	icon: 'swap_horiz',
	routes: [{ path: '', component: loadPage }],
	// Admins only: the module is not even registered for anyone else.
	preRegisterCheck(user) {
		const admin = user && user.role && user.role.admin_access;
		return admin === true || admin === 1 || admin === '1';
	},
};
