// Conveniences for the flow builder. Without this script every button still works through
// the server (add, remove, move, "show its fields"); with it they happen in the page.
(function () {
  "use strict";
  var form = document.getElementById("builder");
  if (!form) return;
  document.documentElement.classList.add("js");
  var rows = document.getElementById("task-rows");
  var total = form.querySelector("input[name='tasks-TOTAL_FORMS']");

  function visibleRows() {
    return rows ? Array.prototype.filter.call(rows.children, function (r) { return !r.hidden; }) : [];
  }

  function renumber() {
    visibleRows().forEach(function (row, i) {
      var order = row.querySelector("input[name$='-ORDER']");
      if (order) order.value = i + 1;
      var number = row.querySelector(".row-number");
      if (number) number.textContent = i + 1;
    });
  }

  function taskNames() {
    var names = [];
    visibleRows().forEach(function (row) {
      var input = row.querySelector("input[name$='-name']");
      var value = input ? input.value.trim() : "";
      if (value && names.indexOf(value) < 0) names.push(value);
    });
    return names;
  }

  // Target and start selects offer the task names currently typed in the page.
  function refreshTargets() {
    var names = taskNames();
    form.querySelectorAll("select[name$='-target_task_success'], select[name$='-target_task_failure'], select[name='start_task']").forEach(function (select) {
      var value = select.value;
      var fixed = select.name === "start_task" ? [["", "the first task"]] : [["", "—"], ["end", "end (stop the flow)"]];
      var options = fixed.concat(names.map(function (n) { return [n, n]; }));
      if (value && !options.some(function (o) { return o[0] === value; })) options.push([value, value + " (not a task)"]);
      select.innerHTML = "";
      options.forEach(function (o) {
        var option = document.createElement("option");
        option.value = o[0];
        option.textContent = o[1];
        select.appendChild(option);
      });
      select.value = value;
    });
  }

  function addRow() {
    var template = document.getElementById("empty-task");
    var index = parseInt(total.value, 10);
    var holder = document.createElement("div");
    holder.innerHTML = template.innerHTML.replace(/__prefix__/g, String(index));
    var row = holder.firstElementChild;
    rows.appendChild(row);
    total.value = index + 1;
    renumber();
    refreshTargets();
    var name = row.querySelector("input[name$='-name']");
    if (name) name.focus();
  }

  function removeRow(row) {
    var del = row.querySelector("input[name$='-DELETE']");
    if (del) del.checked = true;
    row.hidden = true;
    renumber();
    refreshTargets();
  }

  function moveRow(row, up) {
    var list = visibleRows();
    var i = list.indexOf(row);
    var other = list[up ? i - 1 : i + 1];
    if (!other) return;
    if (up) rows.insertBefore(row, other); else rows.insertBefore(other, row);
    renumber();
    row.querySelector("button[value^='" + (up ? "up" : "down") + "']").focus();
  }

  // A new type brings its own parameter fields, fetched from the server; values of
  // parameters with the same name are kept.
  function loadFields(select) {
    var row = select.closest(".task-row");
    var params = row.querySelector(".params");
    var url = form.dataset.fieldsUrl + "?prefix=" + encodeURIComponent(row.dataset.prefix) + "&type=" + encodeURIComponent(select.value);
    fetch(url, { credentials: "same-origin" }).then(function (r) { return r.text(); }).then(function (html) {
      var old = {};
      params.querySelectorAll("input, select, textarea").forEach(function (el) { old[el.name] = el.value; });
      var holder = document.createElement("div");
      holder.innerHTML = html;
      var fresh = holder.querySelector(".params");
      fresh.querySelectorAll("input, select, textarea").forEach(function (el) {
        if (old[el.name] !== undefined && old[el.name] !== "") el.value = old[el.name];
      });
      params.replaceWith(fresh);
    });
  }

  form.addEventListener("click", function (event) {
    var button = event.target.closest("button[name='action']");
    if (!button) return;
    var value = button.value;
    var row = button.closest(".task-row");
    if (value === "add" && rows) { event.preventDefault(); addRow(); }
    else if (value.indexOf("remove:") === 0 && row) { event.preventDefault(); removeRow(row); }
    else if (value.indexOf("up:") === 0 && row) { event.preventDefault(); moveRow(row, true); }
    else if (value.indexOf("down:") === 0 && row) { event.preventDefault(); moveRow(row, false); }
  });
  form.addEventListener("change", function (event) {
    if (event.target.matches("select[name$='-task_type']")) loadFields(event.target);
    if (event.target.matches("input[name$='-name']")) refreshTargets();
  });
})();
