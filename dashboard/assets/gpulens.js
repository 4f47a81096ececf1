/* gpulens dashboard: the clientside callbacks, served as a file (the Content-Security-Policy allows no
   inline scripts beyond Dash's own, by hash). Registered with ClientsideFunction("gpulens", name). */
window.dash_clientside = Object.assign({}, window.dash_clientside, {
    gpulens: {
        /* light/dark theme: the stored choice, else the system's; a click toggles it */
        theme: function(n, theme) {
            var t = theme;
            if (!t) {
                t = (window.matchMedia && window.matchMedia('(prefers-color-scheme: dark)').matches)
                    ? 'dark' : 'light';
            }
            if (n) { t = (t === 'dark') ? 'light' : 'dark'; }
            document.documentElement.dataset.theme = t;
            document.body.dataset.agThemeMode = t;
            return t;
        },
        /* run page: the time range the graph shows now, whenever Plotly reports a relayout, and only
           when it changed. Read from the graph, not from the event: Plotly also reports {autosize: true}
           whenever the page reflows (cards arriving), and Dash runs a callback once for events that
           come together, with the last one's data -- a zoom followed by a reflow would be lost. */
        timeRelayout: function(_rd, last) {
            const nu = window.dash_clientside.no_update;
            const gd = document.querySelector('#ts-graph .js-plotly-plot');
            const xa = gd && gd.layout && gd.layout.xaxis;
            if (!xa) { return nu; }
            const out = (xa.autorange || !xa.range)
                ? {'xaxis.autorange': true}
                : {'xaxis.range[0]': Number(xa.range[0]), 'xaxis.range[1]': Number(xa.range[1])};
            if (!last && out['xaxis.autorange']) { return nu; }  /* the first drawing: nothing changed */
            if (last && JSON.stringify(last) === JSON.stringify(out)) { return nu; }
            return out;
        },
        /* the plot width the server downsamples for */
        viewport: function(_) {
            return {width: Math.max(400, Math.min(window.innerWidth - 80, 2400))};
        },
        /* live page: append new points. Idempotent: only points newer than a trace's last x are
           appended, and updates computed for another build of the figure are dropped, so two
           overlapping server responses never duplicate points. */
        liveExtend: function(upd) {
            const nu = window.dash_clientside.no_update;
            if (!upd) { return nu; }
            const gd = document.querySelector('#live-graph .js-plotly-plot');
            if (!gd || !gd.data || !gd.layout || !gd.layout.meta || gd.layout.meta.live_token !== upd.token) {
                return nu;
            }
            const xs = [], ys = [], idx = [], mx = [];
            upd.idx.forEach(function(ti, k) {
                const tr = gd.data[ti];
                if (!tr) { return; }
                let last = -Infinity;
                for (let j = tr.x.length - 1; j >= 0; j--) { if (tr.x[j] !== null) { last = tr.x[j]; break; } }
                const nx = [], ny = [];
                upd.x[k].forEach(function(x, j) { if (x > last) { nx.push(x); ny.push(upd.y[k][j]); } });
                if (nx.length) { xs.push(nx); ys.push(ny); idx.push(ti); mx.push(upd.max[k]); }
            });
            if (idx.length) { Plotly.extendTraces(gd, {x: xs, y: ys}, idx, mx); }
            return upd.n;
        }
    }
});
