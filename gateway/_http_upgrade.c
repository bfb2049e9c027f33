/* The lane's WebSocket upgrades that start without a Python call: the relay thread's dial, called from C.
 *
 * Why: handing each upgrade back to Python to pick an instance and dial cost about 14 Python frames a handshake,
 * most of the gateway's instructions past nginx's. Python now builds a plan once per routing decision and
 * instance set (gateway/proxy/lane_upgrades.py, `UpgradeRoute.plan`), and each later upgrade of that decision is
 * placed here: the balancer's round-robin counter moved as `Balancer.order` moves it, the instance's request with
 * the client's key put back, the relay's dial through its capsule (gateway/_relay_api.h), and the dial entered in
 * the relay's table of lane dials, where its completion finds what Python needs. Anything else (no plan, a plan
 * for another instance set, a dial that fails at once) goes back to Python as before (K_UPGRADE), which decides
 * afresh, dials and builds the plan again.
 */
#include "_http.h"

#include "_relay_api.h"

/* The plan's fields (a tuple, built by `UpgradeRoute.plan`). */
enum {
    P_RELAY, P_DIALS, P_UPGRADED, P_ENDED, P_COUNTERS, P_POOL, P_SNAPSHOTS, P_SERVICE, P_SNAPSHOT, P_INSTANCES,
    P_CONNECT_MS, P_RESPONSE_MS, P_IDLE_MS, P_FIELDS
};
/* An instance's fields: (IPv4 address in network order, port, request before the key, after it, its tunnels'
 * on_done, ...): the rest is Python's. */
enum { I_IP, I_PORT, I_BEFORE, I_AFTER, I_ON_DONE, I_MIN_FIELDS };

static const relay_api_t *relay_api;
static int relay_api_missing;

static const relay_api_t *api(void) {
    if (relay_api == NULL && !relay_api_missing) {
        relay_api = PyCapsule_Import(RELAY_API_CAPSULE, 0);
        if (relay_api == NULL) {
            PyErr_Clear();
            relay_api_missing = 1;  /* gateway._relay not built: every upgrade goes back to Python */
        }
    }
    return relay_api;
}

/* The instance this upgrade goes to, as `Balancer.order` would put it first: counters[pool] % n, then + 1. *was
 * is what the counter held (a new reference, NULL: none), for `unpick`. */
static Py_ssize_t pick(PyObject *plan, Py_ssize_t n, PyObject **was) {
    PyObject *counters = PyTuple_GET_ITEM(plan, P_COUNTERS), *pool = PyTuple_GET_ITEM(plan, P_POOL);
    *was = NULL;
    if (!PyDict_Check(counters)) return -1;
    PyObject *now = PyDict_GetItemWithError(counters, pool);
    Py_ssize_t start = 0;
    if (now != NULL) {
        start = PyLong_AsSsize_t(now);
        if (start < 0) return -1;  /* an error, or a counter this code never wrote */
        start %= n;
    } else if (PyErr_Occurred()) {
        return -1;
    }
    PyObject *next = PyLong_FromSsize_t(start + 1);
    int failed = next == NULL || PyDict_SetItem(counters, pool, next) != 0;
    Py_XDECREF(next);
    if (failed) return -1;
    *was = Py_XNewRef(now);
    return start;
}

/* Put the counter back as `pick` found it: the upgrade goes to Python, whose `Balancer.order` then starts from the
 * same instance (a connect refused at once is tried, logged and counted there, as on Python's own dials). */
static void unpick(PyObject *plan, PyObject *was) {
    PyObject *counters = PyTuple_GET_ITEM(plan, P_COUNTERS), *pool = PyTuple_GET_ITEM(plan, P_POOL);
    if (was != NULL ? PyDict_SetItem(counters, pool, was) : PyDict_DelItem(counters, pool)) PyErr_Clear();
    Py_XDECREF(was);
}

/* The plan of `holder` (a one-item list Python replaces), when it still holds for the instances discovery has now. */
static PyObject *current_plan(PyObject *holder) {
    if (!PyList_Check(holder) || PyList_GET_SIZE(holder) != 1) return NULL;
    PyObject *plan = PyList_GET_ITEM(holder, 0);
    if (!PyTuple_Check(plan) || PyTuple_GET_SIZE(plan) != P_FIELDS) return NULL;
    PyObject *snapshots = PyTuple_GET_ITEM(plan, P_SNAPSHOTS);
    if (snapshots != Py_None) {
        /* Discovery replaces a service's tuple when its instances change: the same object means the same set. */
        if (!PyDict_Check(snapshots)) return NULL;
        PyObject *now = PyDict_GetItemWithError(snapshots, PyTuple_GET_ITEM(plan, P_SERVICE));
        if (now != PyTuple_GET_ITEM(plan, P_SNAPSHOT)) return NULL;
    }
    return plan;
}

int lane_upgrade(Lane *l, hconn_t *c, PyObject *holder, PyObject *token) {
    const relay_api_t *relay = api();
    PyObject *plan = relay ? current_plan(holder) : NULL;
    if (plan == NULL) goto python;
    PyObject *instances = PyTuple_GET_ITEM(plan, P_INSTANCES), *dials = PyTuple_GET_ITEM(plan, P_DIALS);
    Py_ssize_t n = PyTuple_Check(instances) ? PyTuple_GET_SIZE(instances) : 0;
    if (n == 0 || !PyDict_Check(dials)) goto python;
    PyObject *was;
    Py_ssize_t index = pick(plan, n, &was);
    if (index < 0) goto python;
    PyObject *instance = PyTuple_GET_ITEM(instances, index);
    if (!PyTuple_Check(instance) || PyTuple_GET_SIZE(instance) < I_MIN_FIELDS) goto unpicked;
    PyObject *before = PyTuple_GET_ITEM(instance, I_BEFORE), *after = PyTuple_GET_ITEM(instance, I_AFTER);
    if (!PyBytes_Check(before) || !PyBytes_Check(after)) goto unpicked;
    size_t blen = (size_t)PyBytes_GET_SIZE(before), alen = (size_t)PyBytes_GET_SIZE(after);
    if (blen + c->wskey_len + alen > sizeof(l->scratch)) goto unpicked;
    unsigned long ip = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(instance, I_IP));
    long port = PyLong_AsLong(PyTuple_GET_ITEM(instance, I_PORT));
    unsigned long long ms[3];
    for (int k = 0; k < 3; k++) ms[k] = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(plan, P_CONNECT_MS + k));
    if (PyErr_Occurred() || ip > UINT32_MAX || port <= 0 || port > 65535) goto unpicked;
    memcpy(l->scratch, PyBytes_AS_STRING(before), blen);
    memcpy(l->scratch + blen, c->wskey, c->wskey_len);
    memcpy(l->scratch + blen + c->wskey_len, PyBytes_AS_STRING(after), alen);
    /* What Python needs when the dial ends: (decision, instance, its index, the head as read, the key, the
     * client's descriptor, when the head was complete, the instance set). Made before the dial: once it runs,
     * nothing may fail. */
    PyObject *fields[8] = {Py_NewRef(token), Py_NewRef(instance), PyLong_FromSsize_t(index),
                           PyBytes_FromStringAndSize(c->cin.data, (Py_ssize_t)c->cin.len),
                           PyBytes_FromStringAndSize(c->wskey, (Py_ssize_t)c->wskey_len), PyLong_FromLong(c->cfd),
                           PyFloat_FromDouble(c->started), Py_NewRef(PyTuple_GET_ITEM(plan, P_SNAPSHOT))};
    PyObject *arg = tuple_of(fields, 8);
    PyObject *entry[4] = {Py_NewRef(PyTuple_GET_ITEM(instance, I_ON_DONE)),
                          Py_NewRef(PyTuple_GET_ITEM(plan, P_UPGRADED)), Py_NewRef(PyTuple_GET_ITEM(plan, P_ENDED)),
                          arg};
    PyObject *dial = arg ? tuple_of(entry, 4) : NULL;
    if (dial == NULL) {
        if (arg == NULL) for (int k = 0; k < 3; k++) Py_DECREF(entry[k]);
        goto unpicked;
    }
    /* The lane lets go of the client before the relay thread may take it (at its 101). */
    lane_forget(l, c->cfd);
    uint64_t id = 0;
    int failed = relay->dial(PyTuple_GET_ITEM(plan, P_RELAY), c->cfd, (uint32_t)ip, (uint16_t)port, l->scratch,
                             blen + c->wskey_len + alen, ms[0], ms[1], ms[2], &id);
    PyObject *key = failed ? NULL : PyLong_FromUnsignedLongLong(id);
    if (key == NULL || PyDict_SetItem(dials, key, dial) != 0) {
        /* A connect refused at once, or a stopped relay: Python takes the upgrade. Past a started dial only memory
         * can fail here, and a dial cannot be taken back: the relay's reports of it find no entry and are dropped,
         * and the client is counted lost (`upgrades_lost` in Lane.stats()). */
        Py_XDECREF(key);
        Py_DECREF(dial);
        if (!failed) {
            PyErr_Clear();
            Py_XDECREF(was);
            l->upgrades_lost++;
            lane_unlink(l, c);
            return 0;
        }
        goto unpicked;
    }
    Py_DECREF(key);
    Py_DECREF(dial);
    Py_XDECREF(was);
    l->upgrades_dialed++;
    lane_unlink(l, c);
    return 0;
unpicked:
    PyErr_Clear();
    unpick(plan, was);
python:
    PyErr_Clear();
    return -1;
}
