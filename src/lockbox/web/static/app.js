/* Lockbox pages: automatic logoff, live updates over the WebSocket, local times, response countdowns.
   No framework and no inline script: the page CSP allows only this file. */
(function () {
  'use strict';

  var body = document.body;
  var data = body.dataset;

  function clearLocalData() {
    // The app keeps nothing locally on purpose; this removes anything that got there anyway.
    try { window.localStorage.clear(); } catch (e) { /* storage may be disabled */ }
    try { window.sessionStorage.clear(); } catch (e) { /* idem */ }
    if (window.caches && window.caches.keys) {
      return window.caches.keys().then(function (keys) {
        return Promise.all(keys.map(function (k) { return window.caches.delete(k); }));
      }).catch(function () {});
    }
    return Promise.resolve();
  }

  function localTimes(root) {
    (root || document).querySelectorAll('time[datetime]').forEach(function (el) {
      var value = el.getAttribute('datetime');
      if (!value || value.length <= 10) { return; } // a date alone stays as written
      var when = new Date(value);
      if (isNaN(when.getTime())) { return; }
      el.title = el.textContent;
      el.textContent = when.toLocaleString([], { dateStyle: 'medium', timeStyle: 'short' });
    });
  }

  var liveStatus = document.getElementById('live-status');
  function announce(text) {
    if (!liveStatus) { return; }
    liveStatus.textContent = '';
    window.setTimeout(function () { liveStatus.textContent = text; }, 50);
  }

  localTimes();

  // -- response clocks (SLA) --------------------------------------------------------------------
  // Each [data-due] counts down from the server's own "now" when it was drawn, so a wrong clock on
  // this computer does not move the deadline.
  function slaText(s) {
    var a = Math.abs(s);
    var t;
    if (a < 60) { t = Math.floor(a) + ' s'; } else {
      var m = Math.floor(a / 60);
      if (m < 60) { t = m + ' min'; } else {
        var h = Math.floor(m / 60);
        m = m % 60;
        t = h < 48 ? (h + ' h' + (m ? ' ' + m + ' min' : '')) : (Math.floor(h / 24) + ' d ' + (h % 24) + ' h');
      }
    }
    return s > 0 ? 'Due in ' + t : 'Overdue by ' + t;
  }
  function slaTick() {
    document.querySelectorAll('[data-due]').forEach(function (el) {
      if (el.slaLeft === undefined) {
        var due = Date.parse(el.getAttribute('data-due'));
        var drawn = Date.parse(el.getAttribute('data-now'));
        if (isNaN(due) || isNaN(drawn)) { return; }
        el.slaLeft = (due - drawn) / 1000;
        el.slaSeen = performance.now();
      }
      var left = el.slaLeft - (performance.now() - el.slaSeen) / 1000;
      var text = el.querySelector('.sla-text');
      if (text) { text.textContent = slaText(left > 0 ? Math.ceil(left) : Math.floor(left)); }
      var late = left <= 0;
      el.classList.toggle('is-overdue', late);
      var row = el.closest('.queue-item');
      if (row) { row.classList.toggle('is-overdue', late); }
    });
  }
  slaTick();
  window.setInterval(slaTick, 1000);

  // Charts wider than a phone scroll sideways; the newest days are at the right end.
  function scrollChartsToEnd() {
    document.querySelectorAll('[data-scroll-end]').forEach(function (el) { el.scrollLeft = el.scrollWidth; });
  }
  scrollChartsToEnd();
  window.addEventListener('resize', scrollChartsToEnd);

  if (document.getElementById('ended-notice')) {
    clearLocalData(); // the sign-in page after a session: nothing of it stays behind
  }
  if (data.session !== '1') { return; }

  // -- automatic logoff -------------------------------------------------------------------------
  var csrfMeta = document.querySelector('meta[name="csrf-token"]');
  var csrf = csrfMeta ? csrfMeta.getAttribute('content') : '';
  var idleTimeout = Number(data.idleTimeout) || 900;
  var warnS = Number(data.warnS) || 120;
  var pollS = Number(data.pollS) || 20;
  var deadline = performance.now() + idleTimeout * 1000;
  var lastKeepalive = performance.now();
  var activityEvery = Math.max(30, idleTimeout / 5) * 1000;
  var finished = false;
  var statusInFlight = false;
  var socket = null;
  var dialog = document.getElementById('idle-warning');
  var countdown = document.getElementById('idle-countdown');
  var stay = document.getElementById('stay-signed-in');

  function remainingS() { return Math.max(0, Math.ceil((deadline - performance.now()) / 1000)); }

  function signOutPage(reason) {
    if (finished) { return; }
    finished = true;
    if (socket) { try { socket.close(); } catch (e) { /* already closed */ } }
    if (dialog && dialog.open) { try { dialog.close(); } catch (e) { /* ignore */ } }
    // What was on screen goes first, then anything kept locally, then back to sign-in.
    body.replaceChildren();
    body.className = 'signed-out';
    document.title = 'Signed out';
    clearLocalData().then(function () {
      window.location.replace('/login?ended=' + encodeURIComponent(reason));
    });
  }

  function applyState(state) {
    if (state && typeof state.remaining_s === 'number') {
      deadline = performance.now() + state.remaining_s * 1000;
      tick();
    }
  }

  function endedBecause(response) {
    // The server knows why (idle, wipe, ended elsewhere); the page's own clock is only a guess.
    return response.json().then(function (b) { return (b && b.reason) || 'ended'; }, function () { return 'ended'; })
      .then(signOutPage);
  }

  function checkStatus(serverSaidEnded) {
    if (finished || (statusInFlight && !serverSaidEnded)) { return; }
    statusInFlight = true;
    fetch('/session/status', { credentials: 'same-origin', cache: 'no-store', headers: { Accept: 'application/json' } })
      .then(function (r) {
        if (r.status === 401) { return endedBecause(r).then(function () { return null; }); }
        if (serverSaidEnded) { signOutPage('ended'); return null; }
        return r.ok ? r.json() : null;
      })
      .then(applyState)
      .catch(function () {
        // Unreachable past the deadline (or told it is over): the server has ended the session anyway.
        if (serverSaidEnded || remainingS() <= 0) { signOutPage(serverSaidEnded ? 'ended' : 'idle'); }
      })
      .then(function () { statusInFlight = false; });
  }

  function keepAlive() {
    lastKeepalive = performance.now();
    return fetch('/session/keepalive', {
      method: 'POST', credentials: 'same-origin', cache: 'no-store',
      headers: { 'X-CSRF-Token': csrf, Accept: 'application/json' }
    }).then(function (r) {
      if (r.status === 401) { return endedBecause(r).then(function () { return null; }); }
      return r.ok ? r.json() : null;
    }).then(applyState).catch(function () {});
  }

  function fmt(s) {
    var m = Math.floor(s / 60);
    var r = s % 60;
    return m + ':' + (r < 10 ? '0' : '') + r;
  }

  function tick() {
    if (finished || !dialog) { return; }
    var left = remainingS();
    if (left <= warnS) {
      countdown.textContent = fmt(left);
      if (!dialog.open) {
        dialog.showModal();
        stay.focus();
      }
    } else if (dialog.open) {
      dialog.close();
    }
    if (left <= 0) { checkStatus(); }
  }

  if (stay) {
    stay.addEventListener('click', function () { keepAlive(); });
  }
  if (dialog) {
    // Escape means the person is here: the same as "stay signed in", never a silent dismissal.
    dialog.addEventListener('cancel', function (e) { e.preventDefault(); keepAlive(); });
  }

  function onActivity() {
    if (finished || (dialog && dialog.open)) { return; }
    if (performance.now() - lastKeepalive >= activityEvery) { keepAlive(); }
  }
  ['keydown', 'pointerdown', 'wheel'].forEach(function (type) {
    document.addEventListener(type, onActivity, { passive: true, capture: true });
  });

  window.setInterval(tick, 1000);
  window.setInterval(checkStatus, pollS * 1000);
  checkStatus();

  // -- live updates -----------------------------------------------------------------------------
  var regions = Array.prototype.slice.call(document.querySelectorAll('[data-live-url]'));
  var missedWhileHidden = false;

  function refresh(el, reason) {
    var url = el.getAttribute('data-live-url');
    var threadId = el.getAttribute('data-live-thread');
    if (threadId) {
      // A receipt only for what is on screen: a background tab has not read anything.
      if (document.visibilityState === 'visible') { url += '?read=1'; } else { missedWhileHidden = true; }
    }
    var nearBottom = (window.innerHeight + window.scrollY) >= (document.body.scrollHeight - 200);
    fetch(url, { credentials: 'same-origin', cache: 'no-store', headers: { Accept: 'text/html' } })
      .then(function (r) {
        if (r.status === 401) { checkStatus(true); return null; }
        if (r.status === 404) {
          return '<p class="alert alert-info">This conversation is no longer available to you.</p>';
        }
        return r.ok ? r.text() : null;
      })
      .then(function (html) {
        if (html === null || finished) { return; }
        var active = document.activeElement;
        var focusHref = active && el.contains(active) ? active.getAttribute('href') : null;
        var focusId = active && el.contains(active) && active.id ? active.id : null;
        // What someone is typing in a form of the region (a transfer's username) survives the refresh.
        var typed = {};
        el.querySelectorAll('input[type="text"][id]').forEach(function (i) { if (i.value) { typed[i.id] = i.value; } });
        el.innerHTML = html;
        localTimes(el);
        slaTick();
        Object.keys(typed).forEach(function (id) {
          var input = document.getElementById(id);
          if (input && el.contains(input)) { input.value = typed[id]; }
        });
        if (focusId && document.getElementById(focusId)) {
          document.getElementById(focusId).focus();
        } else if (focusHref) {
          var again = el.querySelector('a[href="' + window.CSS.escape(focusHref) + '"]');
          if (again) { again.focus(); }
        }
        if (reason === 'message' || reason === 'thread') {
          announce('New message');
          var latest = threadId ? document.getElementById('latest') : null;
          if (latest && nearBottom) { latest.scrollIntoView({ block: 'end' }); }
        }
      })
      .catch(function () {});
  }

  function schedule(el, reason) {
    // Bursts of events (a send, its receipt, a routing update) cost one fetch.
    if (el.liveTimer) { return; }
    el.liveTimer = window.setTimeout(function () { el.liveTimer = null; refresh(el, reason); }, 150);
  }

  function onEvent(ev) {
    if (ev.type === 'wipe') { signOutPage('wipe'); return; }
    if (ev.type === 'session_ended') { checkStatus(true); return; }
    if (ev.type === 'error') { checkStatus(); return; }
    if (ev.type === 'ready') { body.setAttribute('data-live', 'on'); return; }
    if (!ev.thread_id) { return; }
    regions.forEach(function (el) {
      var wanted = (el.getAttribute('data-live-events') || '').split(' ');
      if (wanted.indexOf(ev.type) < 0) { return; }
      var only = el.getAttribute('data-live-thread');
      if (only && only !== ev.thread_id) { return; }
      if (only && ev.type === 'read' && ev.user_id === data.userId) { return; } // our own receipt
      schedule(el, ev.type);
    });
  }

  document.addEventListener('visibilitychange', function () {
    if (document.visibilityState === 'visible' && missedWhileHidden) {
      missedWhileHidden = false;
      regions.forEach(function (el) { if (el.getAttribute('data-live-thread')) { schedule(el, 'visible'); } });
    }
  });

  var retryMs = 1000;
  function connect() {
    if (finished || !('WebSocket' in window)) { return; }
    var ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/api/v1/events');
    socket = ws;
    ws.onopen = function () { retryMs = 1000; };
    ws.onmessage = function (e) {
      var ev;
      try { ev = JSON.parse(e.data); } catch (x) { return; }
      if (ev && typeof ev.type === 'string') { onEvent(ev); }
    };
    ws.onclose = function () {
      socket = null;
      body.setAttribute('data-live', 'off');
      if (finished) { return; }
      checkStatus(); // a closed socket may mean the session is over
      window.setTimeout(connect, retryMs);
      retryMs = Math.min(retryMs * 2, 30000);
    };
  }
  connect();
}());
